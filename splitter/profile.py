"""The Profile: measured costs of every cut candidate, with the machine and engines that measured them.

For each cut the head is extracted from the ONNX model and timed in onnxruntime with the edge's
thread count, the tail likewise with the server's; the activation the head really produced is
encoded with every codec to measure bytes, encode/decode time and error. Times are medians of
repeated runs after warm-up. The Profile is a JSON file a user can keep and diff; planning needs
only the Profile, never the model.

`edge_slowdown` records how much slower the target device is than the machine that measured
(1.0 = this machine is the device). It scales the edge's measured times in the cost model; the
raw measurements stay as measured.

Each timed head or tail run follows an idle gap (`idle_gap_ms`), as a request does: the device
waits for a frame, the server for a request. Back-to-back runs find warm caches and a busy core
and are faster than any request will be (MobileNetV2's head to block 4: 2.9 ms back to back,
3.4 ms after a 1 ms gap, 3.9 ms after 10 ms, on this 2-core machine).

A side that runs with one thread is timed by that thread's CPU clock (`run_clock`): what the run
costs a CPU of its own. On a machine shared with other work, wall time also counts the time other
processes take, and that changes from one cut's measurement to the next: profiling MobileNetV2 and
ResNet-18 beside other busy processes gave heads timed 2–3× apart a minute apart, and the latency
policy, trusting those, chose cuts 10–85% slower end to end than the best (bench/oracle.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from protos import codec as wire_codec
from protos.device_profile import machine_facts
from protos.errors import SplitInferError
from splitter.agreement import Agreement
from splitter.cuts import INPUT_CUT, OUTPUT_CUT, Cut, device_ops
from splitter.graph import Graph, Op, TensorInfo, graph_from_onnx
from splitter.memory import head_memory
from protos.power import PowerModel

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CodecCost:
    nbytes: int
    encode_ms: float
    decode_ms: float
    # Relative L2 error of the decoded activations (0 for lossless codecs).
    rel_error: float
    # How many evaluation samples kept the task metric with this codec at this cut
    # (splitter.evaluate); None in profiles measured without samples.
    agreement: Agreement | None = None


@dataclass(frozen=True)
class CutProfile:
    name: str
    head_size: int
    tensors: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    raw_nbytes: int
    head_ms: float
    tail_ms: float
    codecs: dict[str, CodecCost]
    # Device memory the head needs (splitter.memory): the initializers it reads, and its peak of
    # live activations. Counted from the graph, not measured.
    head_weight_bytes: int = 0
    head_activation_bytes: int = 0

    @property
    def head_memory_bytes(self) -> int:
        return self.head_weight_bytes + self.head_activation_bytes

    @property
    def is_edge_only(self) -> bool:
        return self.name == OUTPUT_CUT

    @property
    def is_cloud_only(self) -> bool:
        return self.name == INPUT_CUT


@dataclass(frozen=True)
class OpProfile:
    """One op of the whole model, timed where it would run: on the edge engine and on the server's."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    edge_ms: float
    server_ms: float
    # Initializers the op reads (OpsProfile.weight_nbytes has their sizes).
    weights: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorProfile:
    """One activation of the whole model and what each codec makes of it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    codecs: dict[str, CodecCost]


@dataclass(frozen=True)
class OpsProfile:
    """Per-op costs of the whole model, for partitioners that build their own cut (the min-cut)
    rather than choose among the profiled ones. `source` says how the op times were obtained."""

    source: str
    ops: tuple[OpProfile, ...]
    tensors: tuple[TensorProfile, ...]
    weight_nbytes: dict[str, int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # What every run of a session costs beyond its ops (every head and every tail pays it once).
    edge_overhead_ms: float = 0.0
    server_overhead_ms: float = 0.0

    def graph(self) -> Graph:
        """The model's Graph as far as planning needs it: ops, activation shapes, weight sizes."""
        ops = tuple(Op(o.name, o.op_type, o.inputs, o.outputs, weights=o.weights) for o in self.ops)
        tensors = {t.name: TensorInfo(t.name, t.dtype, t.shape) for t in self.tensors}
        return Graph(ops, tensors, self.inputs, self.outputs, weight_nbytes=dict(self.weight_nbytes))

    @classmethod
    def from_dict(cls, data: dict) -> OpsProfile:
        return cls(
            source=str(data["source"]),
            ops=tuple(
                OpProfile(o["name"], o["op_type"], tuple(o["inputs"]), tuple(o["outputs"]), float(o["edge_ms"]), float(o["server_ms"]), tuple(o.get("weights", ())))
                for o in data["ops"]
            ),
            tensors=tuple(
                TensorProfile(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]), {k: CodecCost(**v) for k, v in t["codecs"].items()})
                for t in data["tensors"]
            ),
            weight_nbytes={k: int(v) for k, v in data["weight_nbytes"].items()},
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            edge_overhead_ms=float(data.get("edge_overhead_ms", 0.0)),
            server_overhead_ms=float(data.get("server_overhead_ms", 0.0)),
        )


@dataclass(frozen=True)
class EngineInfo:
    engine: str
    version: str
    threads: int
    providers: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    model_id: str
    input_shapes: dict[str, tuple[int, ...]]
    edge: EngineInfo
    server: EngineInfo
    edge_slowdown: float
    repeats: int
    warmup: int
    idle_gap_ms: float
    machine: dict[str, str]
    cuts: tuple[CutProfile, ...]
    sample: str = ""
    format_version: int = FORMAT_VERSION
    # Per-op costs for the min-cut partitioner (splitter.opprofile); None in profiles without them.
    ops: OpsProfile | None = None
    # Codec → what an encoding costs the device beyond its CodecCost when it follows a head run,
    # as in a request, rather than another encoding (see measure_encode_overhead).
    encode_overhead_ms: dict[str, float] = field(default_factory=dict)
    # The target device's power model, when a DeviceProfile described it (splitter.power).
    power: PowerModel | None = None
    # Side ("edge", "server") → the DeviceProfile its head or tail times were predicted from
    # (splitter.device_profile) instead of measured; a side not named here was measured.
    predicted_from: dict[str, str] = field(default_factory=dict)
    # The task metric the codecs' agreement was measured with ("" when it was not), and the
    # samples it was measured on (splitter.samples.Samples.record()).
    metric: str = ""
    samples: dict = field(default_factory=dict)

    @property
    def random_samples(self) -> bool:
        """The agreement was measured on random tensors: it says nothing about the task."""
        return bool(self.samples.get("evaluation", {}).get("random"))

    def cut(self, name: str) -> CutProfile:
        for cut in self.cuts:
            if cut.name == name:
                return cut
        raise SplitInferError(f"profile of {self.model_id!r} has no cut {name!r}")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SplitInferError(f"profile {str(path)!r} does not exist") from None
        except json.JSONDecodeError as err:
            raise SplitInferError(f"profile {str(path)!r} is not valid JSON: {err}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise SplitInferError(f"profile {str(path)!r} cannot be read: {err}") from err
        try:
            return cls.from_dict(data)
        except SplitInferError as err:
            raise SplitInferError(f"profile {str(path)!r}: {err}") from err

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        if not isinstance(data, dict):
            raise SplitInferError(f"malformed profile: expected a JSON object, got {type(data).__name__}")
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise SplitInferError(f"profile format_version {data.get('format_version')} is not {FORMAT_VERSION}")
            cuts = tuple(
                CutProfile(
                    name=c["name"],
                    head_size=int(c["head_size"]),
                    tensors=tuple(c["tensors"]),
                    shapes=tuple(tuple(s) for s in c["shapes"]),
                    raw_nbytes=int(c["raw_nbytes"]),
                    head_ms=float(c["head_ms"]),
                    tail_ms=float(c["tail_ms"]),
                    codecs={k: _codec_cost(v) for k, v in c["codecs"].items()},
                    head_weight_bytes=int(c.get("head_weight_bytes", 0)),
                    head_activation_bytes=int(c.get("head_activation_bytes", 0)),
                )
                for c in data["cuts"]
            )
            engine = lambda d: EngineInfo(d["engine"], d["version"], int(d["threads"]), tuple(d["providers"]))  # noqa: E731
            return cls(
                model_id=data["model_id"],
                input_shapes={k: tuple(v) for k, v in data["input_shapes"].items()},
                edge=engine(data["edge"]),
                server=engine(data["server"]),
                edge_slowdown=float(data["edge_slowdown"]),
                repeats=int(data["repeats"]),
                warmup=int(data["warmup"]),
                idle_gap_ms=float(data["idle_gap_ms"]),
                machine=dict(data["machine"]),
                cuts=cuts,
                sample=data.get("sample", ""),
                ops=OpsProfile.from_dict(data["ops"]) if data.get("ops") is not None else None,
                power=PowerModel.from_dict(data["power"]) if data.get("power") is not None else None,
                predicted_from={str(k): str(v) for k, v in data.get("predicted_from", {}).items()},
                encode_overhead_ms={str(k): float(v) for k, v in data.get("encode_overhead_ms", {}).items()},
                metric=str(data.get("metric", "")),
                samples=dict(data.get("samples") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise SplitInferError(f"malformed profile: {type(err).__name__}: {err}") from err


def _codec_cost(data: dict) -> CodecCost:
    unexpected = set(data) - {f.name for f in fields(CodecCost)}
    if unexpected:
        raise TypeError(f"codec cost has unexpected fields {sorted(unexpected)}")
    agreement = data.get("agreement")
    return CodecCost(
        int(data["nbytes"]), float(data["encode_ms"]), float(data["decode_ms"]), float(data["rel_error"]),
        Agreement.from_dict(agreement) if agreement is not None else None,
    )


# ----------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class ProfileSettings:
    edge_threads: int = 1
    server_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    repeats: int = 10
    warmup: int = 2
    edge_slowdown: float = 1.0
    idle_gap_ms: float = 2.0
    codecs: tuple[str, ...] = field(default_factory=lambda: tuple(c.name for c in wire_codec.list_codecs()))

    def __post_init__(self) -> None:
        for name in ("edge_threads", "server_threads", "repeats"):
            if getattr(self, name) < 1:
                raise SplitInferError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise SplitInferError(f"warmup must be non-negative, got {self.warmup}")
        if self.idle_gap_ms < 0:
            raise SplitInferError(f"idle_gap_ms must be non-negative, got {self.idle_gap_ms}")
        if not self.edge_slowdown > 0:
            raise SplitInferError(f"edge_slowdown must be positive, got {self.edge_slowdown}")
        for name in self.codecs:
            wire_codec.Codec.parse(name)


def session(model: onnx.ModelProto | bytes, threads: int, providers: Iterable[str] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=list(providers))


def median_ms(
    fn: Callable[[], object],
    repeats: int,
    warmup: int,
    idle_gap_ms: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    before: Callable[[], object] | None = None,
) -> float:
    """Median ms of `repeats` timed calls of `fn` after `warmup` untimed ones; each timed call
    follows the idle gap and then `before()`, untimed (what a request does just before it)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if idle_gap_ms:
            time.sleep(idle_gap_ms / 1e3)
        if before is not None:
            before()
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def run_clock(threads: int) -> Callable[[], float]:
    """The clock a session with `threads` intra-op threads is timed by: one thread runs the whole
    model in the calling thread, so that thread's CPU time is what the run costs a CPU of its own,
    without the time other processes on a shared machine take from it; several threads are timed
    by the wall clock (the calling thread's CPU time would miss the workers')."""
    return time.thread_time if threads == 1 else time.perf_counter


def measure_codec(arrays: dict[str, np.ndarray], codec_name: str, repeats: int) -> CodecCost:
    """Bytes, error, and encode (the device's, one thread: its CPU clock) and decode times, each
    timed back to back; measure_encode_overhead adds what a request's first encoding costs more."""
    codec = wire_codec.Codec.parse(codec_name)
    encoded = [wire_codec.encode(n, a, codec) for n, a in arrays.items()]
    encode_ms = median_ms(lambda: [wire_codec.encode(n, a, codec) for n, a in arrays.items()], repeats, 1, clock=time.thread_time)
    decode_ms = median_ms(lambda: [wire_codec.decode(t) for t in encoded], repeats, 1)
    num = den = 0.0
    for tensor, array in zip(encoded, arrays.values()):
        diff = wire_codec.decode(tensor).astype(np.float64) - array
        num += float(np.sum(diff * diff))
        den += float(np.sum(np.square(array, dtype=np.float64)))
    rel_error = (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))
    # The whole wire message counts: per-channel encodings carry a scale and zero point per channel.
    return CodecCost(sum(t.ByteSize() for t in encoded), encode_ms, decode_ms, rel_error)


def measure_encode_overhead(
    heads: list[tuple[Callable[[], list[np.ndarray]], tuple[str, ...]]], codecs: Iterable[str], settings: ProfileSettings
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
        differences = [_encode_after_head_extra_ms(run_head, tensor_names, codec, settings) for run_head, tensor_names in heads]
        extra[name] = max(0.0, statistics.median(differences)) if differences else 0.0
    return extra


def _encode_after_head_extra_ms(
    run_head: Callable[[], list[np.ndarray]], tensor_names: tuple[str, ...], codec: wire_codec.Codec, settings: ProfileSettings
) -> float:
    """One head's encoding timed right after the head ran, less the same timed back to back."""
    arrays = run_head()

    def next_head() -> None:
        arrays[:] = run_head()

    def encode() -> None:
        for tensor_name, array in zip(tensor_names, arrays):
            wire_codec.encode(tensor_name, array, codec)

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
) -> Profile:
    """Measures every cut of `model` (whose inputs have the shapes of `sample`). A side for which
    `predicted_ms(cut)` gives (head ms, tail ms) a number is not timed; the head still runs once
    here, for the activation the codecs are measured on."""
    extractor = onnx.utils.Extractor(model)
    graph = graph_from_onnx(model)
    inputs = list(sample)
    outputs = [v.name for v in model.graph.output]
    codec_repeats = max(1, min(settings.repeats, 5))
    split = [cut for cut in cuts if cut.head_size > 0 and not cut.is_edge_only]
    # The heads that measure_encode_overhead runs: three spread over the model.
    sampled = {split[int(len(split) * q)].name for q in (0.25, 0.5, 0.75)} if split else set()
    heads: list[tuple[Callable[[], list[np.ndarray]], tuple[str, ...]]] = []
    profiled = []
    for cut in progress(cuts):
        head_predicted, tail_predicted = predicted_ms(cut) if predicted_ms is not None else (None, None)
        if cut.head_size == 0:
            head_ms, activations = 0.0, {name: sample[name] for name in cut.tensors}
        else:
            head = session(extractor.extract_model(inputs, list(cut.tensors)), settings.edge_threads)
            head_ms = head_predicted if head_predicted is not None else median_ms(
                lambda: head.run(None, sample), settings.repeats, settings.warmup, settings.idle_gap_ms, run_clock(settings.edge_threads)
            )
            activations = dict(zip(cut.tensors, head.run(None, sample)))
            if cut.name in sampled:
                heads.append((lambda head=head: head.run(None, sample), cut.tensors))
        if cut.is_edge_only:
            tail_ms, activations = 0.0, {}
        elif tail_predicted is not None:
            tail_ms = tail_predicted
        else:
            tail = session(extractor.extract_model(list(cut.tensors), outputs), settings.server_threads)
            tail_ms = median_ms(
                lambda: tail.run(None, activations), settings.repeats, settings.warmup, settings.idle_gap_ms, run_clock(settings.server_threads)
            )
        profiled.append(
            CutProfile(
                name=cut.name,
                head_size=cut.head_size,
                tensors=cut.tensors,
                shapes=tuple(a.shape for a in activations.values()),
                raw_nbytes=sum(a.nbytes for a in activations.values()),
                head_ms=head_ms,
                tail_ms=tail_ms,
                codecs={c: measure_codec(activations, c, codec_repeats) for c in settings.codecs} if activations else {},
                **_memory_fields(graph, cut),
            )
        )
    engine = lambda threads: EngineInfo("onnxruntime", ort.__version__, threads, ("CPUExecutionProvider",))  # noqa: E731
    return Profile(
        model_id=model_id,
        input_shapes={k: tuple(v.shape) for k, v in sample.items()},
        edge=engine(settings.edge_threads),
        server=engine(settings.server_threads),
        edge_slowdown=settings.edge_slowdown,
        repeats=settings.repeats,
        warmup=settings.warmup,
        idle_gap_ms=settings.idle_gap_ms,
        machine=machine_facts(),
        cuts=tuple(profiled),
        sample=sample_name,
        encode_overhead_ms=measure_encode_overhead(heads, settings.codecs, settings),
    )
