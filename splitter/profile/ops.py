"""Per-op costs of a whole model, measured: what the min-cut partitioner prices ops and tensors with.

Op times come from onnxruntime's own profiler (`SessionOptions.enable_profiling`) over runs of the
whole model, once with the edge's engine settings and once with the server's. That was chosen over
the two alternatives: timing each op alone in its own session costs a session per op and loses
what the real run does (fusion, layout, caches), and a DeviceProfile's regression (splitter.
device_profile) is the tool for a device we cannot run on, with its ~10% error; the profiler
reports the run that will actually happen, per kernel, in one pass. Runs follow the profile's idle
gap, as requests do.

onnxruntime fuses before it runs: Conv+Clip becomes one kernel named after the Clip's output,
Conv+Add (a residual sum) one named after the Conv's, and layout reorders appear as kernels of
their own. Each kernel is mapped back to the graph's op that produced its output tensor, then
moved to the first op of the fused group (an elementwise op whose producer has no kernel of its
own was fused into that producer): splitting a fused pair then charges the expensive half to the
side that really runs it. A layout reorder is charged to the op it serves: a ReorderInput to the
op after it, a ReorderOutput (or any other unnamed kernel) to the op before it. The profiler itself costs
~10 µs per kernel (a 1 ms model ran 0.2–0.4 ms slower profiled), so the ops' times are finally
scaled to sum to the model's time per run measured without the profiler (by splitter.profile.timing.run_clock,
as the per-cut profile is timed), less the session's
fixed cost per run (timed on a one-op model: tens of µs, which a small head pays in full), which
is kept apart: every head and every tail pays it once.

Each activation tensor of one real run is then encoded with every codec, for bytes, coding time
and error: the transfer cost of cutting there.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from splitter.graph.graph import Graph, graph_from_onnx
from splitter.profile.measure import measure_codec
from splitter.profile.schema import OpProfile, OpsProfile, TensorProfile
from splitter.profile.timing import ProfileSettings, median_ms, run_clock, session

# Ops onnxruntime fuses into the kernel that produced their input.
_FUSABLE = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Add",
    "Sum",
    "Mul",
    "BatchNormalization",
}
_KERNEL = "_kernel_time"


def _profiled_runs(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int, settings: ProfileSettings
) -> list[dict]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "ops")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(settings.warmup + settings.repeats):
            if settings.idle_gap_ms:
                time.sleep(settings.idle_gap_ms / 1e3)
            session.run(None, feed)
        with open(session.end_profiling()) as file:
            return json.load(file)


def _split_by_run(events: list[dict]) -> list[tuple[float, list[dict]]]:
    """(wall ms, kernel events in execution order) of every run."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = sorted(
        (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(_KERNEL)), key=lambda e: e["ts"]
    )
    result = []
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        result.append((run["dur"] / 1e3, [k for k in kernels if start <= k["ts"] <= end]))
    return result


def _kernel_owner(graph: Graph) -> callable:
    names = {op.name for op in graph.ops}
    producer = {t: op for op in graph.ops for t in op.outputs}

    def owner(kernel: str) -> str | None:
        name = kernel[: -len(_KERNEL)]
        if name in names:
            return name
        for suffix in ("_nchwc", ""):
            tensor = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
            if tensor in producer:
                return producer[tensor].name
        return None

    return owner


def _fused_anchor(graph: Graph, owned: set[str]) -> dict[str, str]:
    """Op → the op its kernel time belongs to: an elementwise op whose producer ran no kernel of
    its own was fused into it, so the producer (the first op of the group) takes the time."""
    producer = {t: op for op in graph.ops for t in op.outputs}
    anchor: dict[str, str] = {}
    for op in graph.ops:
        current = op
        while current.op_type in _FUSABLE and current.inputs:
            source = next(
                (producer[i] for i in current.inputs if i in producer and producer[i].name not in owned), None
            )
            if source is None:
                break
            current = source
        anchor[op.name] = current.name
    return anchor


def run_overhead_ms(threads: int, settings: ProfileSettings) -> float:
    """What one run of a session costs beyond its kernels: a one-op model on one float."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "overhead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tiny.ir_version = 8
    run = session(tiny, threads)
    feed = {"x": np.ones(1, np.float32)}
    return median_ms(
        lambda: run.run(None, feed),
        max(settings.repeats, 20),
        settings.warmup,
        settings.idle_gap_ms,
        run_clock(threads),
    )


def op_times_ms(
    model: onnx.ModelProto,
    graph: Graph,
    feed: dict[str, np.ndarray],
    threads: int,
    settings: ProfileSettings,
    overhead_ms: float = 0.0,
) -> dict[str, float]:
    """Median time of every op of `graph` per run of the whole model; with `overhead_ms` they sum
    to its wall time."""
    owner = _kernel_owner(graph)
    runs = _split_by_run(_profiled_runs(model, feed, threads, settings))[settings.warmup :]
    per_run: list[dict[str, float]] = []
    for _, kernels in runs:
        owners = [owner(kernel["name"]) for kernel in kernels]
        following = None
        for index in reversed(range(len(kernels))):
            if owners[index] is None and kernels[index]["name"].startswith("ReorderInput"):
                owners[index] = following
            following = owners[index] or following
        times: dict[str, float] = defaultdict(float)
        previous = None
        for kernel, op in zip(kernels, owners):
            op = op or previous or graph.ops[0].name
            times[op] += kernel["dur"] / 1e3
            previous = op
        per_run.append(times)
    owned = set().union(*per_run) if per_run else set()
    anchor = _fused_anchor(graph, owned)
    medians = {op.name: 0.0 for op in graph.ops}
    for name in owned:
        medians[anchor.get(name, name)] += statistics.median(run.get(name, 0.0) for run in per_run)
    total = sum(medians.values())
    plain = session(model, threads)
    # Timed by the clock the per-cut profile uses, so that op sums and measured cuts agree.
    wall_ms = median_ms(
        lambda: plain.run(None, feed), settings.repeats, settings.warmup, settings.idle_gap_ms, run_clock(threads)
    )
    scale = max(wall_ms - overhead_ms, 0.0) / total if total > 0 else 1.0
    return {name: ms * scale for name, ms in medians.items()}


def _all_activations(model: onnx.ModelProto, graph: Graph, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One run of the model with every activation as an output."""
    wanted = [name for op in graph.ops for name in op.outputs if name in graph.tensors]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {o.name for o in exposed.graph.output}
    infos = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    for name in wanted:
        if name not in existing and name in infos:
            exposed.graph.output.append(infos[name])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    arrays = dict(zip(names, session.run(names, feed)))
    return {**{name: feed[name] for name in graph.inputs}, **arrays}


# Per-op times of one side given rather than measured: (ms per op, the session's fixed cost per run).
OpTimes = tuple[dict[str, float], float]


def profile_ops(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    settings: ProfileSettings = ProfileSettings(),
    *,
    edge_times: OpTimes | None = None,
    server_times: OpTimes | None = None,
    times_source: str = "",
    graph: Graph | None = None,
) -> OpsProfile:
    """Every op's time on the edge and server engines, and every activation through every codec.
    A side whose times are given (predicted from a DeviceProfile, said in `times_source`) is not
    timed. `graph`: the model's, when the caller has it already."""
    graph = graph or graph_from_onnx(model)

    def measured(threads: int) -> OpTimes:
        overhead = run_overhead_ms(threads, settings)
        return op_times_ms(model, graph, feed, threads, settings, overhead), overhead

    edge, edge_overhead = edge_times or measured(settings.edge_threads)
    server, server_overhead = server_times or measured(settings.server_threads)
    arrays = _all_activations(model, graph, feed)
    codec_repeats = max(1, min(settings.repeats, 3))
    tensors = tuple(
        TensorProfile(
            name,
            str(array.dtype),
            tuple(int(d) for d in array.shape),
            {codec: measure_codec({name: array}, codec, codec_repeats, graph.clamps) for codec in settings.codecs},
        )
        for name, array in arrays.items()
    )
    ops = tuple(
        OpProfile(op.name, op.op_type, op.inputs, op.outputs, edge[op.name], server[op.name], op.weights)
        for op in graph.ops
    )
    return OpsProfile(
        source=times_source
        or f"onnxruntime {ort.__version__} profiler, medians of {settings.repeats} runs after {settings.idle_gap_ms:g} ms idle gaps",
        ops=ops,
        tensors=tensors,
        weight_nbytes=dict(graph.weight_nbytes),
        inputs=graph.inputs,
        outputs=graph.outputs,
        edge_overhead_ms=edge_overhead,
        server_overhead_ms=server_overhead,
    )
