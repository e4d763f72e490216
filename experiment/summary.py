"""The summary table: per cell, N, agreement and latency statistics of the measured requests beside
three predicted figures, each under its own name (see experiment.runner): the planner's cut at the
mean rate of the link the cell replayed ("planner"), the mean of the per-request oracle over the
adaptive bundle's choices ("oracle"), and the mean of the per-request bound over every cut
("bound"). Pure functions of results.csv and meta.json.

The adaptive table: per model, codec and condition with an "adaptive" (or "adaptive+race") cell,
its N, agreement and measured mean beside the best static cell's (the lowest measured mean of the
cells that ran one cut throughout without racing), the best racing static cell's where there is
one, the oracle's mean over the adaptive cell's own requests, and the bound's; and whether it met
the target (experiment.summary.AdaptiveRow.meets_target).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from experiment.config import ADAPTIVE, split_race
from experiment.results import RequestRecord

SUMMARY_CSV = "summary.csv"


@dataclass(frozen=True)
class CellSummary:
    model: str
    policy: str
    codec: str
    condition: str
    cut: str
    requests: int
    errors: int
    agreement: float
    mean_rate_mbps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    predicted_ms: float
    # The planner's cut and its prediction at the mean rate of the link the cell replayed.
    planner_cut: str
    planner_ms: float
    # Over this cell's requests, the mean of the per-request oracle (the adaptive bundle's
    # choices) and of the bound (every cut); NaN for results without them.
    oracle_ms: float = math.nan
    bound_ms: float = math.nan
    # How often consecutive requests ran different cuts.
    switches: int = 0
    # Of the requests that raced the device's own run, the share the device answered first.
    device_wins: float = math.nan
    # How many distinct inputs the requests cycled over (the agreement is over requests).
    inputs: int = 0

    @property
    def vs_oracle(self) -> float:
        """Measured mean over the oracle's (1.0: as good as the bundle's best choice per request)."""
        return self.mean_ms / self.oracle_ms if self.oracle_ms > 0 else math.nan


def summarize(records: Sequence[RequestRecord], meta: dict[str, Any]) -> list[CellSummary]:
    """One row per cell of meta.json, in the order the cells ran."""
    by_cell: dict[tuple[str, str, str, str], list[RequestRecord]] = {}
    for record in records:
        by_cell.setdefault(record.cell, []).append(record)
    rows = []
    for cell in meta["cells"]:
        key = (cell["model"], cell["policy"], cell["codec"], cell["condition"])
        group = by_cell.get(key, [])
        done = [r for r in group if not r.error]
        totals = np.array([r.total_ms for r in done]) if done else np.array([math.nan])
        rows.append(
            CellSummary(
                *key,
                cut=cell["cut"],
                requests=len(group),
                errors=len(group) - len(done),
                agreement=sum(r.agree for r in done) / len(done) if done else math.nan,
                mean_rate_mbps=cell["mean_rate_mbps"],
                mean_ms=float(np.mean(totals)),
                p50_ms=float(np.percentile(totals, 50)),
                p95_ms=float(np.percentile(totals, 95)),
                p99_ms=float(np.percentile(totals, 99)),
                predicted_ms=cell["predicted_ms"],
                # meta.json written before the names were split called the planner's "oracle".
                planner_cut=cell.get("planner_cut", cell.get("oracle_cut", "")),
                planner_ms=cell.get("planner_ms", cell.get("oracle_predicted_ms", math.nan)),
                oracle_ms=float(np.mean([r.oracle_ms for r in done])) if done else math.nan,
                bound_ms=float(np.mean([r.bound_ms for r in done])) if done else math.nan,
                switches=int(cell.get("switches", 0)),
                device_wins=_device_wins(done),
                inputs=len({r.sample for r in done}),
            )
        )
    return rows


def _device_wins(records: Sequence[RequestRecord]) -> float:
    raced = [r for r in records if r.winner]
    return sum(r.winner == "device" for r in raced) / len(raced) if raced else math.nan


def write_summary(rows: Sequence[CellSummary], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=[*(f.name for f in fields(CellSummary)), "vs_oracle"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), "vs_oracle": row.vs_oracle})
    return path


def summary_table(rows: Sequence[CellSummary]):
    from rich.table import Table

    table = Table(
        title="experiment summary: measured latency per cell (ms) vs the planner's cut at the cell's mean rate, "
        "the per-request oracle over the adaptive bundle's choices and the bound over every cut (all predicted)",
        title_justify="left",
    )
    names = ("model", "policy", "codec", "condition", "cut", "planner cut")
    for header in (
        "model",
        "policy",
        "codec",
        "condition",
        "cut",
        "n",
        "err",
        "top-1",
        "inputs",
        "Mbit/s",
        "mean",
        "p50",
        "p95",
        "p99",
        "pred.",
        "planner cut",
        "planner",
        "oracle",
        "bound",
        "÷oracle",
    ):
        # Names wrap rather than being cut short: a truncated cut name says nothing.
        table.add_column(
            header, justify="left" if header in names else "right", overflow="fold", no_wrap=header not in names
        )
    for r in rows:
        table.add_row(
            r.model,
            r.policy,
            r.codec,
            r.condition,
            r.cut,
            str(r.requests),
            f"[red]{r.errors}[/red]" if r.errors else "0",
            f"{r.agreement:.0%}",
            str(r.inputs),
            f"{r.mean_rate_mbps:.3g}",
            *(_ms(v) for v in (r.mean_ms, r.p50_ms, r.p95_ms, r.p99_ms, r.predicted_ms)),
            r.planner_cut,
            *(_ms(v) for v in (r.planner_ms, r.oracle_ms, r.bound_ms)),
            "-" if math.isnan(r.vs_oracle) else f"{r.vs_oracle:.2f}",
        )
    return table


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


ADAPTIVE_CSV = "adaptive.csv"
# The target (issue 18): plain adaptive within this factor of the oracle and below the best static
# cell; raced, below the best static cell raced.
TARGET_VS_ORACLE = 1.10


@dataclass(frozen=True)
class AdaptiveRow:
    model: str
    codec: str
    condition: str
    policy: str  # adaptive, or adaptive+race
    adaptive_ms: float
    switches: int
    best_static_policy: str
    best_static_cut: str
    best_static_ms: float
    oracle_ms: float
    device_wins: float = math.nan
    # The best static cell that raced (NaN where none ran).
    raced_static_ms: float = math.nan
    # The adaptive cell's answered requests and the share that agreed with the unsplit model, and
    # the bound's mean over its requests (every cut, out of the bundle's reach).
    requests: int = 0
    agreement: float = math.nan
    bound_ms: float = math.nan

    @property
    def vs_oracle(self) -> float:
        return self.adaptive_ms / self.oracle_ms if self.oracle_ms > 0 else math.nan

    @property
    def vs_static(self) -> float:
        return self.adaptive_ms / self.best_static_ms if self.best_static_ms > 0 else math.nan

    @property
    def meets_target(self) -> bool | None:
        """Plain: ≤ TARGET_VS_ORACLE × the oracle and below the best static cell; raced: below the
        best static cell raced (None: no such cell ran)."""
        if split_race(self.policy)[1]:
            return None if math.isnan(self.raced_static_ms) else self.adaptive_ms < self.raced_static_ms
        return self.vs_oracle <= TARGET_VS_ORACLE and self.adaptive_ms < self.best_static_ms


def adaptive_rows(rows: Sequence[CellSummary]) -> list[AdaptiveRow]:
    """One row per adaptive cell that has static cells beside it (same model, codec, condition)."""
    found = []
    for row in rows:
        if split_race(row.policy)[0] != ADAPTIVE:
            continue
        statics = [
            r
            for r in rows
            if (r.model, r.codec, r.condition) == (row.model, row.codec, row.condition)
            and split_race(r.policy)[0] != ADAPTIVE
            and not math.isnan(r.mean_ms)
        ]
        plain = [r for r in statics if not split_race(r.policy)[1]]
        raced = [r.mean_ms for r in statics if split_race(r.policy)[1]]
        if not plain:
            continue
        best = min(plain, key=lambda r: r.mean_ms)
        found.append(
            AdaptiveRow(
                row.model,
                row.codec,
                row.condition,
                row.policy,
                row.mean_ms,
                row.switches,
                best.policy,
                best.cut,
                best.mean_ms,
                row.oracle_ms,
                row.device_wins,
                min(raced) if raced else math.nan,
                row.requests - row.errors,
                row.agreement,
                row.bound_ms,
            )
        )
    return found


def write_adaptive(rows: Sequence[AdaptiveRow], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        names = [*(f.name for f in fields(AdaptiveRow)), "vs_oracle", "vs_static", "meets_target"]
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    **asdict(row),
                    "vs_oracle": row.vs_oracle,
                    "vs_static": row.vs_static,
                    "meets_target": row.meets_target,
                }
            )
    return path


def adaptive_table(rows: Sequence[AdaptiveRow]):
    from rich.table import Table

    table = Table(
        title="adaptive runtime: measured mean latency (ms) vs the best static cell (measured), the per-request "
        "oracle over the bundle's choices and the bound over every cut (predicted); target: plain ≤ "
        f"{TARGET_VS_ORACLE:.2f} × oracle and < static, raced < static+race",
        title_justify="left",
    )
    names = ("model", "codec", "condition", "policy", "best static")
    for header in (
        "model",
        "codec",
        "condition",
        "policy",
        "n",
        "top-1",
        "ms",
        "switches",
        "device won",
        "best static",
        "static ms",
        "static+race ms",
        "oracle ms",
        "bound ms",
        "÷oracle",
        "÷static",
        "target",
    ):
        table.add_column(header, justify="left" if header in names else "right", overflow="fold")
    for r in rows:
        table.add_row(
            r.model,
            r.codec,
            r.condition,
            r.policy,
            str(r.requests),
            "-" if math.isnan(r.agreement) else f"{r.agreement:.0%}",
            f"{r.adaptive_ms:.1f}",
            str(r.switches),
            "-" if math.isnan(r.device_wins) else f"{r.device_wins:.0%}",
            f"{r.best_static_policy}: {r.best_static_cut}",
            f"{r.best_static_ms:.1f}",
            "-" if math.isnan(r.raced_static_ms) else f"{r.raced_static_ms:.1f}",
            _ms(r.oracle_ms),
            _ms(r.bound_ms),
            f"{r.vs_oracle:.3f}",
            f"{r.vs_static:.3f}",
            {True: "met", False: "missed", None: "-"}[r.meets_target],
        )
    return table
