"""The CostModel: a Profile, a NetworkModel and a codec → predicted latency and energy of every cut.

    total = head × slowdown + encode × slowdown + bytes / bandwidth + RTT + decode + tail
            + result bytes / downlink + call

(protos.decisions.latency_ms, the formula the device and the experiment's oracle use too.) `call`
is what the gRPC call itself costs beyond its network, measured on loopback when profiling
(splitter.profile.call_cost); a preset's RTT is the network's alone. A decision table leaves it
out: the device's RTT estimate is timed through its own calls and holds it already.

Head and tail times are the profile's measurements made monotone over the prefix cuts
(`monotone_times`): cut k+1's head runs every op cut k's does and more, so it cannot take less
time, and its tail likewise no more. Each cut is measured once, and on a shared machine a cut's
median of 10 runs lands ±20% off its neighbours'; a policy taking the minimum over a hundred cuts
then picks the luckiest measurement, not the fastest cut (MobileNetV2, ×30 device, Wi-Fi:
features.4.conv.2 measured 25% below the cuts around it, chosen, 16% slower end to end than the
best; bench/oracle.py). Isotonic regression (scipy) restores the order with the least change.

The edge's measured times are scaled by the profile's `edge_slowdown` (how much slower the target
device is than the machine that profiled it). The reply (the model's outputs, raw fp32 as a server
returns them by default, with the message's framing) crosses the NetworkModel's downlink. The
all-edge cut costs its head alone: nothing crosses the network.

Energy is the device's, from a PowerModel (protos.power): compute power over head and encode,
radio energy per byte sent, idle power while it waits. Throughput assumes the three stages of a
stream of frames overlap (device computing frame n+1 while frame n is on the wire and frame n-1
on the server): one frame per `period_ms`, the slowest stage; the round trip delays frames but
does not limit their rate.

`CostTable` is what a policy receives: the candidate cuts' costs, as a sequence, plus the per-op
costs (splitter.cost.op_cost) for policies that build their own cut, such as the min-cut.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np
from scipy.optimize import isotonic_regression

from protos.codec import Codec
from protos.decisions import Choice, latency_ms
from protos.errors import SplitInferError
from protos.power import PowerModel
from splitter.cost.network import NetworkModel
from splitter.profile.schema import CutProfile, Profile

if TYPE_CHECKING:
    from splitter.cost.op_cost import OpCosts

# What an InferResponse carries beside its output values: request id, output names, dtype and
# shape fields, the ServerTiming (a 1000-logit reply is 4115 bytes: 115 beside the values).
REPLY_FRAMING_BYTES = 128


@dataclass(frozen=True)
class CutCost:
    name: str
    head_size: int
    tensor_count: int
    codec: str
    nbytes: int
    head_ms: float
    encode_ms: float
    transfer_ms: float
    rtt_ms: float
    decode_ms: float
    tail_ms: float
    # A model input is among the tensors sent: the raw input leaves the device.
    sends_input: bool = False
    # Device energy per request (mJ) under the plan's PowerModel.
    energy_mj: float = 0.0
    # Device memory the head needs: weights + peak activations (splitter.graph.memory).
    head_memory_bytes: int = 0
    # The tensors that cross, by name; empty for the all-on-device cut.
    tensors: tuple[str, ...] = ()
    # The device's ops by name when the cut is not a prefix of the graph's order (a min-cut).
    head_ops: tuple[str, ...] = ()
    # The 95 % lower bound of the codec's measured task agreement at this cut (splitter.accuracy.agreement);
    # None when no answer can change (a lossless codec, all on the device) or none was measured.
    agreement_lower: float | None = None
    # The reply down the downlink: its bytes and their time.
    result_nbytes: int = 0
    result_ms: float = 0.0
    # The gRPC call's own cost (Profile.call_ms); 0 for the all-on-device cut.
    call_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return latency_ms(
            device_ms=self.device_ms,
            transfer_ms=self.transfer_ms,
            rtt_ms=self.rtt_ms,
            server_ms=self.server_ms,
            result_ms=self.result_ms,
            call_ms=self.call_ms,
        )

    @property
    def device_ms(self) -> float:
        return self.head_ms + self.encode_ms

    @property
    def server_ms(self) -> float:
        return self.decode_ms + self.tail_ms

    @property
    def period_ms(self) -> float:
        """Time between frames when device, network and server work on successive frames at once."""
        return max(self.device_ms, self.transfer_ms, self.server_ms, self.result_ms)

    @property
    def frames_per_s(self) -> float:
        return 1e3 / self.period_ms if self.period_ms > 0 else float("inf")

    @property
    def is_edge_only(self) -> bool:
        return self.name == "output"

    @property
    def is_cloud_only(self) -> bool:
        return self.name == "input"

    def choice(self) -> Choice:
        """The network-independent parts of this cost: a decision table's row."""
        return Choice(
            self.name,
            self.codec,
            self.head_ms,
            self.encode_ms,
            self.nbytes,
            self.decode_ms,
            self.tail_ms,
            edge_only=self.is_edge_only,
            head_size=self.head_size,
            result_nbytes=self.result_nbytes,
        )


def make_cost(
    *,
    name: str,
    head_size: int,
    tensors: tuple[str, ...],
    codec: str,
    nbytes: int,
    head_ms: float,
    encode_ms: float,
    network: NetworkModel,
    decode_ms: float,
    tail_ms: float,
    sends_input: bool,
    power: PowerModel,
    head_memory_bytes: int,
    head_ops: tuple[str, ...] = (),
    result_nbytes: int = 0,
    call_ms: float = 0.0,
) -> CutCost:
    """A split cut's cost from its parts (device times already scaled to the target device)."""
    transfer_ms = network.transfer_ms(nbytes)
    result_ms = network.result_ms(result_nbytes)
    energy = power.energy_mj(
        compute_ms=head_ms + encode_ms,
        nbytes=nbytes,
        waiting_ms=transfer_ms + network.rtt_ms + decode_ms + tail_ms + result_ms + call_ms,
    )
    return CutCost(
        name,
        head_size,
        len(tensors),
        codec,
        nbytes,
        head_ms,
        encode_ms,
        transfer_ms,
        network.rtt_ms,
        decode_ms,
        tail_ms,
        sends_input,
        energy,
        head_memory_bytes,
        tensors,
        head_ops,
        result_nbytes=result_nbytes,
        result_ms=result_ms,
        call_ms=call_ms,
    )


def result_nbytes(raw_output_nbytes: int) -> int:
    """The reply's bytes for outputs of `raw_output_nbytes` (raw fp32, the server's default form):
    the values and the message's own fields (ids, names, shapes, the server's timing); 0 when the
    outputs' size is not known (a profile without the all-on-device cut)."""
    return raw_output_nbytes + REPLY_FRAMING_BYTES if raw_output_nbytes else 0


def edge_only_cost(name: str, head_size: int, head_ms: float, power: PowerModel, head_memory_bytes: int) -> CutCost:
    """Everything on the device: its compute alone, no bytes, no round trip."""
    return CutCost(
        name,
        head_size,
        0,
        "-",
        0,
        head_ms,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        energy_mj=power.energy_mj(compute_ms=head_ms, nbytes=0, waiting_ms=0.0),
        head_memory_bytes=head_memory_bytes,
    )


def monotone_times(profile: Profile) -> dict[str, tuple[float, float]]:
    """Cut name → (head ms, tail ms), measured, made non-decreasing (heads) and non-increasing
    (tails) with the head's size: the closest such sequences (least squares)."""
    cuts = sorted(profile.cuts, key=lambda c: c.head_size)
    if len(cuts) < 2:
        return {c.name: (c.head_ms, c.tail_ms) for c in cuts}
    heads = isotonic_regression(np.array([c.head_ms for c in cuts]), increasing=True).x
    tails = isotonic_regression(np.array([c.tail_ms for c in cuts]), increasing=False).x
    return {c.name: (float(h), float(t)) for c, h, t in zip(cuts, heads, tails)}


def device_encode_ms(profile: Profile, codec: str, measured_ms: float) -> float:
    """What encoding a cut's tensors (`measured_ms` here) costs the target device in a request:
    with the overhead of following a head run, scaled by the profile's edge slowdown."""
    return (measured_ms + profile.encode_overhead_ms.get(codec, 0.0)) * profile.edge_slowdown


def cut_cost(
    profile: Profile,
    cut: CutProfile,
    network: NetworkModel,
    codec: str,
    power: PowerModel | None = None,
    times: dict[str, tuple[float, float]] | None = None,
) -> CutCost:
    """`times`: monotone_times(profile), when the caller prices many cuts of one profile."""
    power = power if power is not None else profile_power(profile)
    edge_slowdown = profile.edge_slowdown
    # A cut priced alone, outside the profile's sequence, keeps its own measurement.
    head_ms, tail_ms = (times if times is not None else monotone_times(profile)).get(
        cut.name, (cut.head_ms, cut.tail_ms)
    )
    if cut.is_edge_only:
        return edge_only_cost(cut.name, cut.head_size, head_ms * edge_slowdown, power, cut.head_memory_bytes)
    try:
        measured = cut.codecs[codec]
    except KeyError:
        raise SplitInferError(f"codec {codec!r} was not profiled; profiled: {sorted(cut.codecs)}") from None
    cost = make_cost(
        name=cut.name,
        head_size=cut.head_size,
        tensors=cut.tensors,
        codec=codec,
        nbytes=measured.nbytes,
        head_ms=head_ms * edge_slowdown,
        encode_ms=device_encode_ms(profile, codec, measured.encode_ms),
        network=network,
        decode_ms=measured.decode_ms,
        tail_ms=tail_ms,
        sends_input=any(name in profile.input_shapes for name in cut.tensors),
        power=power,
        head_memory_bytes=cut.head_memory_bytes,
        result_nbytes=result_nbytes(profile.output_nbytes),
        call_ms=profile.call_ms,
    )
    if measured.agreement is not None and Codec.parse(codec).lossy:
        cost = dataclasses.replace(cost, agreement_lower=measured.agreement.lower)
    return cost


def profile_power(profile: Profile) -> PowerModel:
    """The power model the profile's device recorded, or the literature defaults."""
    return getattr(profile, "power", None) or PowerModel()


def predict(profile: Profile, network: NetworkModel, codec: str, power: PowerModel | None = None) -> list[CutCost]:
    """Predicted cost of every cut in the profile, in the profile's cut order."""
    codec = Codec.parse(codec).name
    times = monotone_times(profile)
    return [cut_cost(profile, cut, network, codec, power, times) for cut in profile.cuts]


@dataclass(frozen=True)
class CostTable(Sequence[CutCost]):
    """What a policy chooses from: the candidate cuts' costs (iterate it like a list), and the
    per-op costs when the profile measured them (None otherwise)."""

    cuts: tuple[CutCost, ...]
    ops: OpCosts | None = None

    @overload
    def __getitem__(self, index: int) -> CutCost: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[CutCost]: ...
    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self.cuts[index]

    def __len__(self) -> int:
        return len(self.cuts)

    def __iter__(self) -> Iterator[CutCost]:
        return iter(self.cuts)
