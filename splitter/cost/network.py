"""The NetworkModel: the link a request crosses, as uplink and downlink rates and round-trip time.

Rates and durations are written in the units of protos.units (`5.85mbit`, `40ms`); the four
conditions used across the split-computing literature are named presets (uplink rates from
OpenSignal 2017, as used by Neurosurgeon and DADS). The activation goes up; the reply (the model's
outputs) comes down, which on a slow cell is not free: 1000 fp32 logits take 246 ms down
0.13 Mbit/s. The presets' downlinks are typical of each access technology (cellular downlinks run
about two to three times the uplink); `--downlink-bandwidth` replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.decisions import transfer_ms
from protos.errors import SplitInferError
from protos.units import parse_duration_ms, parse_rate_bps


@dataclass(frozen=True)
class NetworkModel:
    """`bandwidth_bps` is the uplink; `downlink_bps` 0 means a symmetric link."""

    bandwidth_bps: float
    rtt_ms: float
    name: str = ""
    downlink_bps: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise SplitInferError(f"bandwidth_bps must be positive, got {self.bandwidth_bps}")
        if not self.rtt_ms >= 0:
            raise SplitInferError(f"rtt_ms must be non-negative, got {self.rtt_ms}")
        if not self.downlink_bps >= 0:
            raise SplitInferError(f"downlink_bps must be positive (or 0: as the uplink), got {self.downlink_bps}")

    @property
    def downlink(self) -> float:
        return self.downlink_bps or self.bandwidth_bps

    def transfer_ms(self, nbytes: int) -> float:
        return transfer_ms(nbytes, self.bandwidth_bps)

    def result_ms(self, nbytes: int) -> float:
        """The reply's `nbytes` down the downlink."""
        return transfer_ms(nbytes, self.downlink)

    @property
    def label(self) -> str:
        rate = f"{self.bandwidth_bps / 1e6:g} Mbit/s"
        if self.downlink_bps:
            rate += f" up, {self.downlink_bps / 1e6:g} down"
        return f"{self.name} ({rate}, RTT {self.rtt_ms:g} ms)" if self.name else f"{rate}, RTT {self.rtt_ms:g} ms"

    @classmethod
    def parse(cls, bandwidth: str, rtt: str, name: str = "") -> NetworkModel:
        return cls(parse_rate_bps(bandwidth), parse_duration_ms(rtt), name)


# Uplink rates of the literature's standard conditions; RTTs typical of each access technology.
PRESETS: dict[str, NetworkModel] = {
    "cat1": NetworkModel(0.13e6, 100.0, "CAT1", downlink_bps=0.3e6),
    "3g": NetworkModel(1.1e6, 80.0, "3G", downlink_bps=2.0e6),
    "4g": NetworkModel(5.85e6, 40.0, "4G", downlink_bps=13.0e6),
    "wifi": NetworkModel(18.88e6, 10.0, "Wi-Fi", downlink_bps=50.0e6),
}


def resolve_network(
    preset: str | None, bandwidth: str | None, rtt: str | None, downlink: str | None = None
) -> NetworkModel:
    """A preset by name, with the bandwidth, RTT and/or downlink given on the command line replacing
    its own. A link given by --bandwidth alone is symmetric unless --downlink-bandwidth says not."""
    base = None
    if preset is not None:
        base = PRESETS.get(preset.lower())
        if base is None:
            raise SplitInferError(f"unknown network {preset!r}; presets: {', '.join(PRESETS)}")
    if base is None and (bandwidth is None or rtt is None):
        raise SplitInferError("give a network preset, or both --bandwidth and --rtt")
    if downlink is not None:
        downlink_bps = parse_rate_bps(downlink)
    else:
        downlink_bps = base.downlink_bps if base is not None and bandwidth is None else 0.0
    return NetworkModel(
        parse_rate_bps(bandwidth) if bandwidth is not None else base.bandwidth_bps,
        parse_duration_ms(rtt) if rtt is not None else base.rtt_ms,
        base.name if base is not None and bandwidth is None and rtt is None and downlink is None else "",
        downlink_bps,
    )
