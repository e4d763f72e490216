"""Measuring a Profile: every cut's head and tail timed in onnxruntime, the activation the head
really produced encoded with every codec (bytes, encode and decode time, error), and the
head's device memory.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from protos import codec as wire_codec
from protos.codec import Clamp
from protos.cpu_quota import cpu_share
from protos.device_profile import machine_facts
from splitter.graph.cuts import Cut, device_ops, raw_input_tensors
from splitter.graph.graph import Graph, graph_from_onnx
from splitter.graph.memory import head_memory
from splitter.profile.call_cost import measure_call_ms
from splitter.profile.schema import CodecCost, CutProfile, EngineInfo, Profile
from splitter.profile.timing import ProfileSettings, median_ms, run_clock, session


def measure_codec(
    arrays: dict[str, np.ndarray], codec_name: str, repeats: int, clamps: Mapping[str, Clamp] | None = None
) -> CodecCost:
    """Bytes, error, and encode (the device's, one thread: its CPU clock) and decode times, each
    timed back to back; measure_encode_overhead adds what a request's first encoding costs more.
    Each tensor is clamped to its range in `clamps` first, as the device does; the error is
    against the clamped tensor, what the tail reads in effect."""
    codec = wire_codec.Codec.parse(codec_name)
    clamps = clamps or {}
    encoded = [wire_codec.encode(n, a, codec, clamps.get(n)) for n, a in arrays.items()]
    encode_ms = median_ms(
        lambda: [wire_codec.encode(n, a, codec, clamps.get(n)) for n, a in arrays.items()],
        repeats,
        1,
        clock=time.thread_time,
    )
    decode_ms = median_ms(lambda: [wire_codec.decode(t) for t in encoded], repeats, 1)
    num = den = 0.0
    for tensor, (name, array) in zip(encoded, arrays.items()):
        array = wire_codec.clamped(array, codec, clamps.get(name))
        diff = wire_codec.decode(tensor).astype(np.float64) - array
        num += float(np.sum(diff * diff))
        den += float(np.sum(np.square(array, dtype=np.float64)))
    rel_error = (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))
    # The whole wire message counts: per-channel encodings carry a scale and zero point per channel.
    return CodecCost(sum(t.ByteSize() for t in encoded), encode_ms, decode_ms, rel_error)


def measure_encode_overhead(
    heads: list[tuple[Callable[[], list[np.ndarray]], tuple[str, ...]]],
    codecs: Iterable[str],
    settings: ProfileSettings,
    clamps: Mapping[str, Clamp] | None = None,
) -> dict[str, float]:
    """Per codec: how much more an encoding costs when it follows a head run, as in a request, than
    back to back, as measure_codec times it: the median over a few heads of the difference.

    The head leaves the caches and the allocator's free lists to the model; the encoding then
    touches its input and its temporaries cold. On this machine that adds ~0.2–0.4 ms to encodings
    timed at 0.05–0.5 ms back to back (MobileNetV2's int8+zstd), whatever their size, which a
    phone-class device 30× slower pays 30× over: enough to make the planner prefer the wrong one of
    two cuts that send about the same bytes (bench/oracle.py)."""
    extra = {}
    for name in codecs:
        codec = wire_codec.Codec.parse(name)
        differences = [
            _encode_after_head_extra_ms(run_head, tensor_names, codec, settings, clamps or {})
            for run_head, tensor_names in heads
        ]
        extra[name] = max(0.0, statistics.median(differences)) if differences else 0.0
    return extra


def _encode_after_head_extra_ms(
    run_head: Callable[[], list[np.ndarray]],
    tensor_names: tuple[str, ...],
    codec: wire_codec.Codec,
    settings: ProfileSettings,
    clamps: Mapping[str, Clamp],
) -> float:
    """One head's encoding timed right after the head ran, less the same timed back to back."""
    arrays = run_head()

    def next_head() -> None:
        arrays[:] = run_head()

    def encode() -> None:
        for tensor_name, array in zip(tensor_names, arrays):
            wire_codec.encode(tensor_name, array, codec, clamps.get(tensor_name))

    after_head = median_ms(encode, settings.repeats, 0, settings.idle_gap_ms, time.thread_time, before=next_head)
    return after_head - median_ms(encode, settings.repeats, 1, clock=time.thread_time)


def _memory_fields(graph: Graph, cut: Cut) -> dict[str, int]:
    memory = head_memory(graph, device_ops(graph, cut), cut.tensors)
    return {"head_weight_bytes": memory.weight_bytes, "head_activation_bytes": memory.activation_bytes}


def profile_cuts(
    model: onnx.ModelProto,
    model_id: str,
    cuts: list[Cut],
    sample: dict[str, np.ndarray],
    settings: ProfileSettings = ProfileSettings(),
    *,
    sample_name: str = "",
    progress: Callable[[Iterable[Cut]], Iterable[Cut]] = iter,
    predicted_ms: Callable[[Cut], tuple[float | None, float | None]] | None = None,
    graph: Graph | None = None,
) -> Profile:
    """Measures every cut of `model` (whose inputs have the shapes of `sample`). A side for which
    `predicted_ms(cut)` gives (head ms, tail ms) a number is not timed; the head still runs once
    here, for the activation the codecs are measured on. `graph`: the model's, when the caller
    has it already."""
    extractor = onnx.utils.Extractor(model)
    graph = graph or graph_from_onnx(model)
    raw = raw_input_tensors(graph)
    outputs = [v.name for v in model.graph.output]
    codec_repeats = max(1, min(settings.repeats, 5))
    split = [cut for cut in cuts if cut.head_size > 0 and not cut.is_edge_only]
    # The heads that measure_encode_overhead runs: three spread over the model.
    sampled = {split[int(len(split) * q)].name for q in (0.25, 0.5, 0.75)} if split else set()
    heads: list[tuple[Callable[[], list[np.ndarray]], tuple[str, ...]]] = []
    profiled = []
    for cut in progress(cuts):
        head_predicted, tail_predicted = predicted_ms(cut) if predicted_ms is not None else (None, None)
        head_ms, activations, head = _head_side(extractor, cut, sample, settings, head_predicted)
        if head is not None and cut.name in sampled:
            heads.append((lambda head=head: head.run(None, sample), cut.tensors))
        if cut.is_edge_only:
            tail_ms, activations = 0.0, {}
        elif tail_predicted is not None:
            tail_ms = tail_predicted
        else:
            tail_ms = _tail_ms(extractor.extract_model(list(cut.tensors), outputs), activations, settings)
        profiled.append(
            CutProfile(
                name=cut.name,
                head_size=cut.head_size,
                tensors=cut.tensors,
                shapes=tuple(a.shape for a in activations.values()),
                raw_nbytes=sum(a.nbytes for a in activations.values()),
                head_ms=head_ms,
                tail_ms=tail_ms,
                codecs={c: measure_codec(activations, c, codec_repeats, graph.clamps) for c in settings.codecs}
                if activations
                else {},
                **_memory_fields(graph, cut),
                sends_input=any(name in raw for name in cut.tensors),
            )
        )
    return _profile(model_id, sample, sample_name, settings, profiled, heads, graph.clamps)


def _head_side(
    extractor: onnx.utils.Extractor,
    cut: Cut,
    sample: dict[str, np.ndarray],
    settings: ProfileSettings,
    predicted_ms: float | None,
) -> tuple[float, dict[str, np.ndarray], ort.InferenceSession | None]:
    """(the head's ms, the activations it sends, its session): timed unless `predicted_ms` is given;
    no head (the input cut) takes 0 ms and sends the sample itself."""
    if cut.head_size == 0:
        return 0.0, {name: sample[name] for name in cut.tensors}, None
    head = session(extractor.extract_model(list(sample), list(cut.tensors)), settings.edge_threads)
    head_ms = predicted_ms
    if head_ms is None:
        clock = run_clock(settings.edge_threads)
        head_ms = median_ms(
            lambda: head.run(None, sample), settings.repeats, settings.warmup, settings.idle_gap_ms, clock
        )
    return head_ms, dict(zip(cut.tensors, head.run(None, sample), strict=True)), head


def _tail_ms(tail_model: onnx.ModelProto, activations: dict[str, np.ndarray], settings: ProfileSettings) -> float:
    tail = session(tail_model, settings.server_threads)
    clock = run_clock(settings.server_threads)
    return median_ms(
        lambda: tail.run(None, activations), settings.repeats, settings.warmup, settings.idle_gap_ms, clock
    )


def _profile(
    model_id: str,
    sample: dict[str, np.ndarray],
    sample_name: str,
    settings: ProfileSettings,
    profiled: list[CutProfile],
    heads: list[tuple[Callable[[], list[np.ndarray]], tuple[str, ...]]],
    clamps: Mapping[str, Clamp],
) -> Profile:
    """The Profile of the measured cuts, with the engines and the machine that measured them."""

    def engine(threads: int) -> EngineInfo:
        return EngineInfo("onnxruntime", ort.__version__, threads, ("CPUExecutionProvider",))

    machine, slowdown = machine_facts(), settings.edge_slowdown
    share = cpu_share()
    if settings.edge_threads == 1 and share < 1:
        # The head's CPU clock reads as unthrottled while the quota holds the thread back: the
        # device runs at `share` of this CPU under sustained load (protos.cpu_quota).
        slowdown /= share
        machine["cpu_share"] = f"{share:g} (edge_slowdown includes {1 / share:g}x for this thread's CPU quota)"
    return Profile(
        model_id=model_id,
        input_shapes={k: tuple(v.shape) for k, v in sample.items()},
        edge=engine(settings.edge_threads),
        server=engine(settings.server_threads),
        edge_slowdown=slowdown,
        repeats=settings.repeats,
        warmup=settings.warmup,
        idle_gap_ms=settings.idle_gap_ms,
        machine=machine,
        cuts=tuple(profiled),
        sample=sample_name,
        encode_overhead_ms=measure_encode_overhead(heads, settings.codecs, settings, clamps),
        call_ms=measure_call_ms(),
    )
