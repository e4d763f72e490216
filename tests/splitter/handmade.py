"""Hand-made profiles whose answers are known, shared by the policy, min-cut and sweep tests."""

from __future__ import annotations

import dataclasses

from splitter.graph.cuts import enumerate_cuts
from splitter.graph.graph import Graph
from splitter.graph.memory import head_memory
from splitter.profile.schema import CodecCost, CutProfile, EngineInfo, OpProfile, OpsProfile, Profile, TensorProfile

ENGINE = EngineInfo("onnxruntime", "1.0", 1, ("CPUExecutionProvider",))


def cut(
    name: str,
    head_size: int,
    head_ms: float,
    tail_ms: float,
    nbytes: int,
    *,
    encode_ms: float = 0.5,
    decode_ms: float = 0.25,
    memory: tuple[int, int] = (0, 0),
) -> CutProfile:
    """One cut: int8+zstd sends `nbytes`, fp32 four times as many (and costs nothing to code);
    `memory` is (head weight bytes, head activation bytes). The outputs' size is left unknown (0),
    so the reply costs nothing and the totals stay solvable by hand."""
    weights, activations = memory
    if name == "output":
        return CutProfile(name, head_size, ("out",), ((1, 10),), 0, head_ms, 0.0, {}, weights, activations)
    return CutProfile(
        name=name,
        head_size=head_size,
        tensors=("x",) if name == "input" else (f"t{head_size}",),
        shapes=((1, nbytes),),
        raw_nbytes=4 * nbytes,
        head_ms=head_ms,
        tail_ms=tail_ms,
        codecs={
            "fp32": CodecCost(4 * nbytes, 0.0, 0.0, 0.0),
            "int8+zstd": CodecCost(nbytes, encode_ms, decode_ms, 0.004),
        },
        head_weight_bytes=weights,
        head_activation_bytes=activations,
    )


def profile(cuts: list[CutProfile], *, slowdown: float = 1.0, model_id: str = "hand") -> Profile:
    return Profile(
        model_id=model_id,
        input_shapes={"x": (1, 3, 8, 8)},
        edge=ENGINE,
        server=dataclasses.replace(ENGINE, threads=8),
        edge_slowdown=slowdown,
        repeats=3,
        warmup=1,
        idle_gap_ms=0.0,
        machine={"platform": "test"},
        cuts=tuple(cuts),
        sample="hand-made",
    )


def op_level_profile(
    graph: Graph, times: dict[str, tuple[float, float]], link_ms: dict[str, float], *, model_id: str = "hand-dag"
) -> Profile:
    """A profile of `graph` whose ops take `times[op] = (edge ms, server ms)` and whose tensors take
    `link_ms[tensor]` to send with int8+zstd on an 8 Mbit/s uplink (1000 bytes per ms, free coding);
    its prefix cuts are priced the same way, so per-cut and per-op planning agree exactly."""
    codec = lambda ms: {"int8+zstd": CodecCost(round(ms * 1000), 0.0, 0.0, 0.0)}  # noqa: E731
    ops = OpsProfile(
        source="hand-made",
        ops=tuple(
            OpProfile(op.name, op.op_type, op.inputs, op.outputs, *times[op.name], op.weights) for op in graph.ops
        ),
        tensors=tuple(
            TensorProfile(n, graph.tensors[n].dtype, graph.tensors[n].shape, codec(ms)) for n, ms in link_ms.items()
        ),
        weight_nbytes=dict(graph.weight_nbytes),
        inputs=graph.inputs,
        outputs=graph.outputs,
    )
    cuts = []
    for c in enumerate_cuts(graph, include_input=True):
        head = [op.name for op in graph.ops[: c.head_size]]
        tail = [op.name for op in graph.ops[c.head_size :]]
        memory = head_memory(graph, graph.ops[: c.head_size], c.tensors)
        sent = sum(link_ms[t] for t in c.tensors)
        cuts.append(
            CutProfile(
                c.name,
                c.head_size,
                c.tensors,
                tuple(graph.tensors[t].shape for t in c.tensors),
                0,
                sum(times[n][0] for n in head),
                sum(times[n][1] for n in tail),
                {} if c.is_edge_only else codec(sent),
                memory.weight_bytes,
                memory.activation_bytes,
            )  # fmt: skip
        )
    return dataclasses.replace(
        profile(cuts, model_id=model_id), ops=ops, input_shapes={n: graph.tensors[n].shape for n in graph.inputs}
    )
