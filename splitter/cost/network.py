"""The NetworkModel: the uplink a request crosses, as bandwidth and round-trip time.

Rates and durations are written in the units of protos.units (`5.85mbit`, `40ms`); the four
conditions used across the split-computing literature are named presets (uplink rates from
OpenSignal 2017, as used by Neurosurgeon and DADS).
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.decisions import transfer_ms
from protos.errors import SplitInferError
from protos.units import parse_duration_ms, parse_rate_bps


@dataclass(frozen=True)
class NetworkModel:
    bandwidth_bps: float
    rtt_ms: float
    name: str = ""

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise SplitInferError(f"bandwidth_bps must be positive, got {self.bandwidth_bps}")
        if not self.rtt_ms >= 0:
            raise SplitInferError(f"rtt_ms must be non-negative, got {self.rtt_ms}")

    def transfer_ms(self, nbytes: int) -> float:
        return transfer_ms(nbytes, self.bandwidth_bps)

    @property
    def label(self) -> str:
        rate = f"{self.bandwidth_bps / 1e6:g} Mbit/s"
        return f"{self.name} ({rate}, RTT {self.rtt_ms:g} ms)" if self.name else f"{rate}, RTT {self.rtt_ms:g} ms"

    @classmethod
    def parse(cls, bandwidth: str, rtt: str, name: str = "") -> NetworkModel:
        return cls(parse_rate_bps(bandwidth), parse_duration_ms(rtt), name)


# Uplink rates of the literature's standard conditions; RTTs typical of each access technology.
PRESETS: dict[str, NetworkModel] = {
    "cat1": NetworkModel(0.13e6, 100.0, "CAT1"),
    "3g": NetworkModel(1.1e6, 80.0, "3G"),
    "4g": NetworkModel(5.85e6, 40.0, "4G"),
    "wifi": NetworkModel(18.88e6, 10.0, "Wi-Fi"),
}


def resolve_network(preset: str | None, bandwidth: str | None, rtt: str | None) -> NetworkModel:
    """A preset by name, with the bandwidth and/or RTT given on the command line replacing its own."""
    base = None
    if preset is not None:
        base = PRESETS.get(preset.lower())
        if base is None:
            raise SplitInferError(f"unknown network {preset!r}; presets: {', '.join(PRESETS)}")
    if base is None and (bandwidth is None or rtt is None):
        raise SplitInferError("give a network preset, or both --bandwidth and --rtt")
    return NetworkModel(
        parse_rate_bps(bandwidth) if bandwidth is not None else base.bandwidth_bps,
        parse_duration_ms(rtt) if rtt is not None else base.rtt_ms,
        base.name if base is not None and bandwidth is None and rtt is None else "",
    )
