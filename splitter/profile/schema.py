"""The Profile: measured costs of every cut candidate, with the machine and engines that measured them.

For each cut the head is extracted from the ONNX model and timed in onnxruntime with the edge's
thread count, the tail likewise with the server's; the activation the head really produced is
encoded with every codec to measure bytes, encode/decode time and error. Times are medians of
repeated runs after warm-up. The Profile is a JSON file a user can keep and diff; planning needs
only the Profile, never the model.

`edge_slowdown` records how much slower the target device is than the machine that measured
(1.0 = this machine is the device). It scales the edge's measured times in the cost model; the
raw measurements stay as measured. A one-thread edge profiled under a cgroup CPU quota (a
throttled device emulated on this machine) includes the quota in it: its CPU clock reads as
unthrottled, the device runs at the quota's share (protos.cpu_quota; `machine["cpu_share"]`).

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

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from protos.errors import SplitInferError
from protos.power import PowerModel
from splitter.accuracy.agreement import Agreement
from splitter.graph.cuts import INPUT_CUT, OUTPUT_CUT
from splitter.graph.graph import Graph, Op, TensorInfo

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CodecCost:
    nbytes: int
    encode_ms: float
    decode_ms: float
    # Relative L2 error of the decoded activations (0 for lossless codecs).
    rel_error: float
    # How many evaluation samples kept the task metric with this codec at this cut
    # (splitter.accuracy.evaluate); None in profiles measured without samples.
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
    # Device memory the head needs (splitter.graph.memory): the initializers it reads, and its peak of
    # live activations. Counted from the graph, not measured.
    head_weight_bytes: int = 0
    head_activation_bytes: int = 0
    # A tensor it sends is the raw input, or the raw input moved or padded (splitter.graph.cuts
    # raw_input_tensors); older profiles know only the input cut (Profile.sends_input checks both).
    sends_input: bool = False

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
                OpProfile(
                    o["name"],
                    o["op_type"],
                    tuple(o["inputs"]),
                    tuple(o["outputs"]),
                    float(o["edge_ms"]),
                    float(o["server_ms"]),
                    tuple(o.get("weights", ())),
                )
                for o in data["ops"]
            ),
            tensors=tuple(
                TensorProfile(
                    t["name"],
                    t["dtype"],
                    tuple(int(d) for d in t["shape"]),
                    {k: CodecCost(**v) for k, v in t["codecs"].items()},
                )
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
    # Per-op costs for the min-cut partitioner (splitter.profile.ops); None in profiles without them.
    ops: OpsProfile | None = None
    # Codec → what an encoding costs the device beyond its CodecCost when it follows a head run,
    # as in a request, rather than another encoding (see measure_encode_overhead).
    encode_overhead_ms: dict[str, float] = field(default_factory=dict)
    # The target device's power model, when a DeviceProfile described it (protos.power).
    power: PowerModel | None = None
    # Side ("edge", "server") → the DeviceProfile its head or tail times were predicted from
    # (splitter.profile.predict.device) instead of measured; a side not named here was measured.
    predicted_from: dict[str, str] = field(default_factory=dict)
    # The task metric the codecs' agreement was measured with ("" when it was not), and the
    # samples it was measured on (splitter.accuracy.samples.Samples.record()).
    metric: str = ""
    samples: dict = field(default_factory=dict)
    # What one gRPC call costs beyond its network (splitter.profile.call_cost), charged once per
    # split request; 0 in profiles made before it was measured.
    call_ms: float = 0.0
    # How many cuts the model has when only some were profiled (`profile --max-cuts`, spread by
    # head size: splitter.graph.cuts.spread_cuts); 0 when every cut was.
    model_cuts: int = 0

    @property
    def random_samples(self) -> bool:
        """The agreement was measured on random tensors: it says nothing about the task."""
        return bool(self.samples.get("evaluation", {}).get("random"))

    @functools.cached_property
    def output_nbytes(self) -> int:
        """The model outputs' raw bytes: what the all-on-device cut hands on (0 if not profiled)."""
        return next((cut.raw_nbytes for cut in self.cuts if cut.is_edge_only), 0)

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
                    sends_input=bool(c.get("sends_input", False)),
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
                call_ms=float(data.get("call_ms", 0.0)),
                model_cuts=int(data.get("model_cuts", 0)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise SplitInferError(f"malformed profile: {type(err).__name__}: {err}") from err


def _codec_cost(data: dict) -> CodecCost:
    unexpected = set(data) - {f.name for f in fields(CodecCost)}
    if unexpected:
        raise TypeError(f"codec cost has unexpected fields {sorted(unexpected)}")
    agreement = data.get("agreement")
    return CodecCost(
        int(data["nbytes"]),
        float(data["encode_ms"]),
        float(data["decode_ms"]),
        float(data["rel_error"]),
        Agreement.from_dict(agreement) if agreement is not None else None,
    )
