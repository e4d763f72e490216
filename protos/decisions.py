"""The decision table of a multi-cut bundle, and the one latency formula every side predicts with.

A split request's latency is what the device computes, the bytes' transfer, one round trip and
what the server computes:

    latency_ms = device_ms (head + encode) + transfer_ms (bytes · 8 / bandwidth) + rtt_ms
               + server_ms (decode + tail)                 (all on the device: its head alone)

The planner's CostModel (splitter.cost.cut_cost), the multi-cut export (splitter.export.adaptive, which
writes the table), the device's cut chooser (edge_runtime.adaptive, which reads it) and the
experiment's oracle (experiment.oracle, which prices the transfer by a trace instead of a rate)
all use `latency_ms`, so a prediction means the same thing wherever it is made.

The table (a bundle manifest's `decisions`, plain JSON): per candidate (cut, codec) a `Choice`, the
network-independent parts of its latency (device times already scaled to the target device), with
the planning RTT and the sweep's switching points kept for people reading the bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from protos.errors import BundleError

DECISIONS_VERSION = 1


def transfer_ms(nbytes: int, bandwidth_bps: float) -> float:
    """Milliseconds `nbytes` take at `bandwidth_bps`."""
    return nbytes * 8e3 / bandwidth_bps


def latency_ms(
    *,
    device_ms: float,
    transfer_ms: float,
    rtt_ms: float,
    server_ms: float,
    result_ms: float = 0.0,
    call_ms: float = 0.0,
) -> float:
    """A split request's latency from its parts (the module's formula): `result_ms` is the reply's
    bytes down the downlink, `call_ms` what the gRPC call costs beyond its network."""
    return device_ms + transfer_ms + rtt_ms + server_ms + result_ms + call_ms


@dataclass(frozen=True)
class ServerLoad:
    """What the server is doing now, as the device observes it (edge_runtime.server_load): its
    tails run `tail_factor` × the profile's time (batches under load), and a request waits
    `wait_ms` in its queue before its tail starts."""

    tail_factor: float = 1.0
    wait_ms: float = 0.0


IDLE_SERVER = ServerLoad()


@dataclass(frozen=True)
class Choice:
    """One (cut, codec) a device may run: codec "-" and `edge_only` for all on the device."""

    cut: str
    codec: str
    head_ms: float
    encode_ms: float
    nbytes: int
    decode_ms: float
    tail_ms: float
    edge_only: bool = False
    # Ops on the device, for tables and plots; not part of the latency.
    head_size: int = field(default=0, compare=False)
    # The reply's bytes (the model's outputs), which cross the downlink.
    result_nbytes: int = 0

    @property
    def device_ms(self) -> float:
        return self.head_ms + self.encode_ms

    @property
    def server_ms(self) -> float:
        return self.decode_ms + self.tail_ms

    def predicted_ms(
        self,
        bandwidth_bps: float,
        rtt_ms: float,
        downlink_bps: float | None = None,
        load: ServerLoad = IDLE_SERVER,
    ) -> float:
        """At an uplink of `bandwidth_bps` (the downlink is as fast when not given) and the
        server's `load` (the profile's times: an idle server)."""
        if self.edge_only:
            return self.head_ms
        sent = transfer_ms(self.nbytes, bandwidth_bps)
        received = transfer_ms(self.result_nbytes, downlink_bps or bandwidth_bps)
        server_ms = self.decode_ms + self.tail_ms * load.tail_factor + load.wait_ms
        return latency_ms(
            device_ms=self.device_ms, transfer_ms=sent, rtt_ms=rtt_ms, server_ms=server_ms, result_ms=received
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.cut, self.codec)


def _choice(entry: Mapping) -> Choice:
    return Choice(
        cut=str(entry["cut"]),
        codec=str(entry["codec"]),
        head_ms=float(entry["head_ms"]),
        encode_ms=float(entry["encode_ms"]),
        nbytes=int(entry["nbytes"]),
        decode_ms=float(entry["decode_ms"]),
        tail_ms=float(entry["tail_ms"]),
        edge_only=bool(entry.get("edge_only", False)),
        head_size=int(entry.get("head_size", 0)),
        result_nbytes=int(entry.get("result_nbytes", 0)),
    )


@dataclass(frozen=True)
class DecisionTable:
    choices: tuple[Choice, ...]
    planning_rtt_ms: float
    model_id: str = ""
    # How much slower than the profiling machine the target device was assumed to be.
    edge_slowdown: float = 1.0
    profiled_on: str = ""
    # Per codec: [lo_bps, hi_bps, cut] segments of the planning sweep at the planning RTT.
    switching_points: Mapping[str, Sequence[Sequence[object]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "version": DECISIONS_VERSION,
            "model_id": self.model_id,
            "edge_slowdown": self.edge_slowdown,
            "profiled_on": self.profiled_on,
            "planning_rtt_ms": self.planning_rtt_ms,
            "entries": [asdict(choice) for choice in self.choices],
            "switching_points": {
                codec: [list(s) for s in segments] for codec, segments in self.switching_points.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, cuts: Sequence[str]) -> DecisionTable:
        """The bundle's `decisions`; every entry must name one of the bundle's `cuts`."""
        if not data:
            raise BundleError("the multi-cut bundle has no decision table: export it with `splitinfer export-adaptive`")
        version = data.get("version")
        if version != DECISIONS_VERSION:
            raise BundleError(f"decision table version {version!r} is not supported (expected {DECISIONS_VERSION})")
        try:
            choices = tuple(_choice(entry) for entry in data["entries"])
            table = cls(
                choices,
                float(data.get("planning_rtt_ms", 0.0)),
                str(data.get("model_id", "")),
                float(data.get("edge_slowdown", 1.0)),
                str(data.get("profiled_on", "")),
                dict(data.get("switching_points", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"malformed decision table: {type(err).__name__}: {err}") from err
        table.check(cuts)
        return table

    def check(self, cuts: Sequence[str]) -> None:
        if not self.choices:
            raise BundleError("the decision table has no entries")
        unknown = sorted({c.cut for c in self.choices} - set(cuts))
        if unknown:
            raise BundleError(f"the decision table names cuts {unknown} the bundle does not carry ({list(cuts)})")
        for choice in self.choices:
            times = (choice.head_ms, choice.encode_ms, choice.decode_ms, choice.tail_ms)
            if not all(math.isfinite(t) and t >= 0 for t in times) or choice.nbytes < 0:
                raise BundleError(
                    f"decision table entry {choice.key}: times and bytes must be finite and ≥ 0, got {choice}"
                )

    def best(
        self, bandwidth_bps: float, rtt_ms: float, *, offloading: bool = False, load: ServerLoad = IDLE_SERVER
    ) -> Choice:
        candidates = [c for c in self.choices if not (offloading and c.edge_only)] or list(self.choices)
        return min(candidates, key=lambda c: c.predicted_ms(bandwidth_bps, rtt_ms, load=load))
