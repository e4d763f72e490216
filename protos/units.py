"""Units people write, parsed once for every side: rates (`5.85mbit`, `300kbit`, `1.2MB/s`),
durations (`40ms`, `0.1s`, `500us`), shares (`1%`, `0.01`) and sizes (`4MB`, `512KiB`). The
planner, the network lab, the experiment configs and the command line all read them the same way.
"""

from __future__ import annotations

import math
import re

from protos.errors import SplitInferError

_RATE_UNITS = {
    "bit": 1.0,
    "bps": 1.0,
    "b/s": 1.0,
    "kbit": 1e3,
    "kbps": 1e3,
    "kb/s": 1e3,
    "mbit": 1e6,
    "mbps": 1e6,
    "mb/s": 1e6,
    "gbit": 1e9,
    "gbps": 1e9,
    "gb/s": 1e9,
    "kibit": 1024.0,
    "mibit": 1024.0**2,
    "gibit": 1024.0**3,
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
    if not math.isfinite(value * scale):
        raise SplitInferError(f"bandwidth {text!r} is not a finite rate")
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


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size_bytes(text: str) -> int:
    """`4MB` → 4_000_000, `512KiB` → 524_288, `1.5GB`; decimal units are powers of 1000."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise SplitInferError(f"memory size {text!r} is not a number with a unit like 4MB, 512KiB or 1.5GB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
