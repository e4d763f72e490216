"""Rich tables for what the commands print: a plan's cost table, the requests of a run, and the
fitting every wide table goes through (`Fitted`), so a table is readable at 80 columns.

Presentation only: each function turns result dataclasses into a `rich.table.Table`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

if TYPE_CHECKING:  # the edge commands import this module without the splitter installed
    from edge_runtime.results import EdgeResult
    from splitter.cost.cut_cost import CutCost
    from splitter.cost.plan import Plan


class Fitted:
    """`table` as wide as the console it is printed on allows, by leaving columns out rather than
    cutting cells short: numbers and names are never shrunk (rich would end them with "…"); the
    columns in `drop_order` go first to last until the rest fits, and the caption says which went.
    Columns that fold (long names) keep their longest word. Fitted when printed, so a wider
    terminal shows every column."""

    def __init__(self, table: Table, drop_order: Sequence[str]) -> None:
        self.table, self.drop_order = table, drop_order

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = copy.copy(self.table)
        table.columns = list(table.columns)
        for column in table.columns:
            if column.justify == "right" or column.overflow != "fold":  # numbers, and what must not wrap
                # Rich narrows any column down to "…"; a minimum width as wide as its widest cell
                # keeps it whole, and makes the table's measured minimum what it really needs.
                column.no_wrap = True
                column.min_width = max(
                    Measurement.get(console, options, cell).maximum for cell in (column.header, *column.cells)
                )
        # First, names the same on every row (one model, one codec): said once, in the caption.
        shared = []
        for column in list(table.columns):
            cells = {str(cell) for cell in column.cells}
            if self._too_wide(console, options, table) and table.row_count > 1 and len(cells) == 1:
                if column.justify != "right" and column.header:
                    table.columns = [c for c in table.columns if c is not column]
                    shared.append(f"{column.header} {cells.pop()}")
        dropped = []
        for header in self.drop_order:
            if not self._too_wide(console, options, table):
                break
            kept = [c for c in table.columns if c.header != header]
            if len(kept) < len(table.columns):
                table.columns = kept
                dropped.append(str(header).replace("\n", " "))
        notes = [f"every row: {', '.join(shared)}"] * bool(shared)
        notes += [f"left out at {options.max_width} columns: {', '.join(dropped)}"] * bool(dropped)
        if notes:
            table.caption = "; ".join([*([table.caption] if table.caption else []), *notes])
            table.caption_justify = "left"
        yield table

    @staticmethod
    def _too_wide(console: Console, options: ConsoleOptions, table: Table) -> bool:
        return Measurement.get(console, options.update_width(1 << 16), table).minimum > options.max_width


def _kb(nbytes: int) -> str:
    return f"{nbytes / 1000:,.1f}"


# What a narrow terminal leaves out of a plan first: the RTT and the call are the same on every
# split row, the codec stages are small; the cut, its codec, total and note stay.
PLAN_DROP_ORDER = (
    "call\nms",
    "RTT\nms",
    "reply\nms",
    "tensors",
    "decode\nms",
    "encode\nms",
    "tail\nms",
    "head\nms",
    "transfer\nms",
    "agree\n≥",
    "KB\nsent",
)
# The experiment's tables (experiment.summary): the model, policy, condition, cut and the latency
# against the oracle stay.
SUMMARY_DROP_ORDER = (
    "inputs",
    "n",
    "err",
    "p99",
    "p50",
    "Mbit/s",
    "pred.",
    "oracle",
    "top-1",
    "p95",
    "oracle cut",
    "codec",
)
ADAPTIVE_DROP_ORDER = ("static+race ms", "switches", "device won", "oracle ms", "÷static", "static ms", "codec")
SELFTEST_DROP_ORDER = ("expected", "p90", "down Δ", "up Δ", "RTT asked")
REQUESTS_DROP_ORDER = (
    "request KB",
    "other",
    "outputs",
    "queue",
    "decode",
    "encode",
    "KB sent",
    "tail",
    "head",
    "network",
)


def plan_excerpt(plan: Plan, best: int = 10) -> list[CutCost]:
    """The `best` cuts by predicted latency, the chosen one and the two baselines, in cut order: a
    readable excerpt of a model's ~100 cuts (`splitinfer plan --all` prints every one)."""
    costs = plan.best_per_cut() if plan.codec == "auto" else list(plan.costs)
    ranked = sorted(costs, key=lambda c: c.total_ms)[:best]
    keep = {c.name for c in ranked} | {plan.chosen.name, "output", "input"}
    return [c for c in costs if c.name in keep]


def plan_table(plan: Plan, rows: Sequence[CutCost] | None = None) -> Fitted:
    """The plan's costs (all cuts, or `rows`; an `auto` plan shows each cut's best codec), the chosen
    cut marked ◀."""
    auto = plan.codec == "auto"
    measured = any(c.agreement_lower is not None for c in plan.costs)
    budget = f" within {plan.max_error:.1%} error" if plan.max_error is not None else ""
    title = f"{plan.model_id}: {plan.policy} plan for {plan.network.label}, codec {plan.codec}{budget}"
    if measured:
        title += " (agree ≥: 95% lower bound of the measured task agreement)"
    table = Table(title=title, title_justify="left")
    headers = [
        "cut",
        "tensors",
        *(["codec"] if auto else []),
        *(["agree\n≥"] if measured else []),
        "head\nms",
        "encode\nms",
        "KB\nsent",
        "transfer\nms",
        "RTT\nms",
        "call\nms",
        "decode\nms",
        "tail\nms",
        "reply\nms",
        "total\nms",
        "",
    ]
    for header in headers:
        table.add_column(header, justify="left" if header in ("cut", "codec", "") else "right")
    shown = list(rows) if rows is not None else (plan.best_per_cut() if auto else list(plan.costs))
    if plan.chosen not in shown:
        shown.append(plan.chosen)
    for cost in shown:
        chosen = cost == plan.chosen
        note = "◀ chosen" if chosen else {"output": "all on device", "input": "all on server"}.get(cost.name, "")
        table.add_row(
            cost.name,
            "-" if cost.is_edge_only else str(cost.tensor_count),
            *([cost.codec] if auto else []),
            *([f"{cost.agreement_lower:.1%}" if cost.agreement_lower is not None else "exact"] if measured else []),
            f"{cost.head_ms:.2f}",
            f"{cost.encode_ms:.2f}",
            _kb(cost.nbytes),
            f"{cost.transfer_ms:.1f}",
            f"{cost.rtt_ms:.1f}",
            f"{cost.call_ms:.2f}",
            f"{cost.decode_ms:.2f}",
            f"{cost.tail_ms:.2f}",
            f"{cost.result_ms:.1f}",
            f"{cost.total_ms:.1f}",
            note,
            style="bold green" if chosen else None,
        )
    return Fitted(table, PLAN_DROP_ORDER)


def requests_table(results: Sequence[tuple[str, EdgeResult, str]], title: str) -> Fitted:
    """One row per request: where its milliseconds went, in stages that add up to its total, its
    bytes, and a note (agreement), if any."""
    caption = (
        "ms; decode, queue and tail: the server's own account; outputs: encoded there, decoded here; "
        "other: building the request, a retry's earlier attempts"
    )
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    headers = [
        "input",
        "head",
        "encode",
        "network",
        "decode",
        "queue",
        "tail",
        "outputs",
        "other",
        "total",
        "KB sent",
        "request KB",
    ]
    with_notes = any(note for *_, note in results)
    for header in headers + ["vs unsplit"] * with_notes:
        table.add_column(
            header,
            justify="left" if header in ("input", "vs unsplit") else "right",
            overflow="fold" if header == "vs unsplit" else "ellipsis",
            # A note reads in two lines, not six: columns leave for it first.
            min_width=28 if header == "vs unsplit" else None,
        )
    for name, result, note in results:
        t = result.timing
        stages = (t.head_ms, t.encode_ms, t.network_ms, t.decode_ms, t.queue_ms, t.tail_ms)
        table.add_row(
            name,
            *(f"{ms:.2f}" for ms in stages),
            f"{t.output_encode_ms + t.output_decode_ms:.2f}",
            f"{t.other_ms:.2f}",
            f"{t.total_ms:.2f}",
            _kb(result.bytes_sent),
            _kb(result.request_bytes),
            *[note] * with_notes,
        )
    return Fitted(table, REQUESTS_DROP_ORDER)
