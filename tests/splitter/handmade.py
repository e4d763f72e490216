"""Hand-made profiles whose answers are known, shared by the policy, min-cut and sweep tests."""

from __future__ import annotations

import dataclasses

from splitter.profile import CodecCost, CutProfile, EngineInfo, Profile

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
    `memory` is (head weight bytes, head activation bytes)."""
    weights, activations = memory
    if name == "output":
        return CutProfile(name, head_size, ("out",), ((1, 10),), 40, head_ms, 0.0, {}, weights, activations)
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
