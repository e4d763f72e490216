"""Typed readers of the values of a parsed TOML table: each checks one value where it enters the
config and raises SplitInferError naming the file, the key (with its table's prefix), the value and
the rule, so every part of the config reports a bad value the same way.
"""

from __future__ import annotations

import math
from typing import Any

from protos.errors import SplitInferError


def no_unknown(table: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise SplitInferError(f"{where}: unknown key {prefix}{unknown[0]}; known: {', '.join(sorted(known))}")


def nonempty_list(data: dict[str, Any], key: str, where: str) -> list:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise SplitInferError(f"{where}: `{key}` must be a non-empty list, got {value!r}")
    return value


def name_list(data: dict[str, Any], key: str, where: str, default: tuple[str, ...]) -> list[str]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SplitInferError(f"{where}: `{key}` must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise SplitInferError(f"{where}: `{key}` lists a name twice: {value!r}")
    return value


def integer(
    table: dict[str, Any], key: str, where: str, prefix: str = "", *, minimum: int, default: int | None = None
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SplitInferError(f"{where}: {prefix}{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def positive(table: dict[str, Any], key: str, where: str, prefix: str = "", *, default: float | None = None) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise SplitInferError(f"{where}: {prefix}{key} must be a positive number, got {value!r}")
    return float(value)


def boolean(table: dict[str, Any], key: str, where: str, prefix: str = "", *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise SplitInferError(f"{where}: {prefix}{key} must be true or false, got {value!r}")
    return value
