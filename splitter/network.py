"""The NetworkModel: the uplink a request crosses, as bandwidth and round-trip time.

Rates and durations are parsed from the units people write (`5.85mbit`, `300kbit`, `1.2MB/s`,
`40ms`, `0.1s`); the four conditions used across the split-computing literature are named presets
(uplink rates from OpenSignal 2017, as used by Neurosurgeon and DADS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protos.errors import SplitInferError

_RATE_UNITS = {
    "bit": 1.0, "bps": 1.0, "b/s": 1.0,
    "kbit": 1e3, "kbps": 1e3, "kb/s": 1e3,
    "mbit": 1e6, "mbps": 1e6, "mb/s": 1e6,
    "gbit": 1e9, "gbps": 1e9, "gb/s": 1e9,
    "kibit": 1024.0, "mibit": 1024.0**2, "gibit": 1024.0**3,
}
_BYTE_RATE_UNITS = {"b/s": 8.0, "kb/s": 8e3, "mb/s": 8e6, "gb/s": 8e9}
_DURATION_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"


def parse_rate_bps(text: str) -> float:
    """`5.85mbit` → 5_850_000.0 bit/s. Lower-case `b` is bits; `MB/s`-style upper-case B is bytes."""
    match = re.fullmatch(_NUMBER + r"([a-zA-Z/]*)\s*", str(text))
    if not match:
        raise SplitInferError(f"bandwidth {text!r} is not a number with a unit like 5.85mbit or 1MB/s")
    value, unit = float(match.group(1)), match.group(2)
    if "B" in unit and unit.lower() in _BYTE_RATE_UNITS:
        scale = _BYTE_RATE_UNITS[unit.lower()]
    elif unit.lower() in _RATE_UNITS:
        scale = _RATE_UNITS[unit.lower()]
    elif unit == "":
        raise SplitInferError(f"bandwidth {text!r} has no unit; write e.g. {text}mbit")
    else:
        raise SplitInferError(f"bandwidth {text!r}: unknown unit {unit!r}; use bit, kbit, mbit, gbit or kB/s, MB/s")
    if value <= 0:
        raise SplitInferError(f"bandwidth {text!r} must be positive")
    return value * scale


def parse_share(text: object, what: str) -> float:
    """`1%`, `0.5 %` or `0.01` (a string or a number) → a share in [0, 1); errors name `what`."""
    value = str(text).strip()
    try:
        if isinstance(text, bool):
            raise ValueError
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise SplitInferError(f"{what} {text!r} is not a share like 1% or 0.01") from None
    if not 0 <= share < 1:
        raise SplitInferError(f"{what} {text!r} must be at least 0 and below 100%")
    return share


def parse_duration_ms(text: str) -> float:
    """`40ms` → 40.0, `0.1s` → 100.0, `500us` → 0.5."""
    match = re.fullmatch(_NUMBER + r"([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise SplitInferError(f"duration {text!r} is not a number with a unit like 40ms, 0.1s or 500us")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


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
        return nbytes * 8.0 / self.bandwidth_bps * 1e3

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
