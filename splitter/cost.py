"""The CostModel: a Profile, a NetworkModel and a codec → predicted latency of every cut.

    total = head × slowdown + encode × slowdown + bytes / bandwidth + RTT + decode + tail

The edge's measured times are scaled by the profile's `edge_slowdown` (how much slower the target
device is than the machine that profiled it). The reply (the model output, a few KB) is not
charged for transfer: the uplink is the bottleneck this models. The all-edge cut costs its head
alone: nothing crosses the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.codec import Codec
from protos.errors import SplitInferError
from splitter.network import NetworkModel
from splitter.profile import CutProfile, Profile


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

    @property
    def total_ms(self) -> float:
        return self.head_ms + self.encode_ms + self.transfer_ms + self.rtt_ms + self.decode_ms + self.tail_ms

    @property
    def is_edge_only(self) -> bool:
        return self.name == "output"

    @property
    def is_cloud_only(self) -> bool:
        return self.name == "input"


def cut_cost(profile: Profile, cut: CutProfile, network: NetworkModel, codec: str) -> CutCost:
    edge_slowdown = profile.edge_slowdown
    if cut.is_edge_only:
        return CutCost(cut.name, cut.head_size, 0, "-", 0, cut.head_ms * edge_slowdown, 0.0, 0.0, 0.0, 0.0, 0.0)
    try:
        measured = cut.codecs[codec]
    except KeyError:
        raise SplitInferError(f"codec {codec!r} was not profiled; profiled: {sorted(cut.codecs)}") from None
    return CutCost(
        name=cut.name,
        head_size=cut.head_size,
        tensor_count=len(cut.tensors),
        codec=codec,
        nbytes=measured.nbytes,
        head_ms=cut.head_ms * edge_slowdown,
        encode_ms=measured.encode_ms * edge_slowdown,
        transfer_ms=network.transfer_ms(measured.nbytes),
        rtt_ms=network.rtt_ms,
        decode_ms=measured.decode_ms,
        tail_ms=cut.tail_ms,
        sends_input=any(name in profile.input_shapes for name in cut.tensors),
    )


def predict(profile: Profile, network: NetworkModel, codec: str) -> list[CutCost]:
    """Predicted cost of every cut in the profile, in the profile's cut order."""
    codec = Codec.parse(codec).name
    return [cut_cost(profile, cut, network, codec) for cut in profile.cuts]
