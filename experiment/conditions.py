"""The network conditions of an experiment: the `[[conditions]]` tables of its config, each a preset,
a fixed rate or a trace (relative to the config file), with its RTT, downlink, loss and netemu
backend, read into frozen `Condition`s; every error names the file, the condition and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiment.toml_values import no_unknown
from protos.errors import SplitInferError

_CONDITION_KEYS = {"name", "preset", "rate", "rtt", "trace", "down", "loss", "backend"}


@dataclass(frozen=True)
class Condition:
    """One network condition. Exactly one of `rate_bps` and `trace` is set; `rtt_ms` is split
    evenly into the two directions' one-way delays; `down_bps` None is an unlimited downlink;
    `loss` applies to each direction; `backend` is the netemu backend that emulates it."""

    name: str
    rtt_ms: float
    rate_bps: float | None = None
    trace: Path | None = None
    down_bps: float | None = None
    loss: float = 0.0
    backend: str = "user"

    @property
    def is_trace(self) -> bool:
        return self.trace is not None


def parse_conditions(conditions: object, where: str, base: Path) -> tuple[Condition, ...]:
    """The `conditions` list of the config, each with a distinct name."""
    if not isinstance(conditions, list) or not conditions:
        raise SplitInferError(f"{where}: `conditions` must list at least one [[conditions]] table")
    parsed_conditions = tuple(_condition(c, i, where, base) for i, c in enumerate(conditions))
    names = [c.name for c in parsed_conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SplitInferError(f"{where}: condition names {duplicates} repeat; give each a distinct `name`")
    return parsed_conditions


def _condition(table: object, index: int, where: str, base: Path) -> Condition:
    from protos.units import parse_duration_ms, parse_rate_bps
    from splitter.cost.network import PRESETS

    at = f"conditions[{index}]."
    if not isinstance(table, dict):
        raise SplitInferError(f"{where}: conditions[{index}] must be a table, got {table!r}")
    no_unknown(table, _CONDITION_KEYS, where, at)
    given = [key for key in ("preset", "rate", "trace") if key in table]
    if len(given) != 1:
        raise SplitInferError(
            f"{where}: conditions[{index}] needs exactly one of preset, rate, trace; got {given or 'none'}"
        )

    def parsed(key: str, parse: Any) -> Any:
        try:
            return parse(str(table[key]))
        except SplitInferError as err:
            raise SplitInferError(f"{where}: {at}{key}: {err}") from None

    rtt_ms = parsed("rtt", parse_duration_ms) if "rtt" in table else None
    down_bps = parsed("down", parse_rate_bps) if "down" in table else None
    link = _link_settings(table, where, at)
    if "preset" in table:
        preset = PRESETS.get(str(table["preset"]).lower())
        if preset is None:
            raise SplitInferError(f"{where}: {at}preset {table['preset']!r} is not one of {', '.join(PRESETS)}")
        return Condition(
            str(table.get("name", preset.name)),
            preset.rtt_ms if rtt_ms is None else rtt_ms,
            preset.bandwidth_bps,
            None,
            down_bps,
            **link,
        )
    if rtt_ms is None:
        raise SplitInferError(f'{where}: conditions[{index}] needs `rtt` (e.g. "40ms") with a rate or a trace')
    if "rate" in table:
        rate = parsed("rate", parse_rate_bps)
        return Condition(str(table.get("name", f"{rate / 1e6:g}mbit")), rtt_ms, rate, None, down_bps, **link)
    trace = Path(str(table["trace"]))
    trace = trace if trace.is_absolute() else base / trace
    if not trace.is_file():
        raise SplitInferError(f"{where}: {at}trace {str(table['trace'])!r} does not exist (looked at {str(trace)!r})")
    return Condition(str(table.get("name", trace.stem)), rtt_ms, None, trace, down_bps, **link)


def _link_settings(table: dict[str, Any], where: str, at: str) -> dict[str, Any]:
    """`loss` ("1%" or 0.01) and `backend` of a condition, checked together: only the tun backend
    (or auto, which then picks it) can drop packets."""
    from netemu.link import BACKENDS
    from protos.units import parse_share

    backend = table.get("backend", Condition.backend)
    if backend not in BACKENDS:
        raise SplitInferError(f"{where}: {at}backend {backend!r} is not one of {', '.join(BACKENDS)}")
    raw = table.get("loss", 0.0)
    try:
        loss = parse_share(raw, "loss")
    except SplitInferError as err:
        raise SplitInferError(f"{where}: {at}{err}") from None
    if loss and backend not in ("tun", "auto"):
        raise SplitInferError(
            f'{where}: {at}loss {raw!r} needs backend = "tun" (the {backend} backend cannot drop packets)'
        )
    return {"loss": loss, "backend": backend}
