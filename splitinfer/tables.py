"""Rich tables for what the commands print: a plan's cost table, the requests of a run.

Presentation only: each function turns result dataclasses into a `rich.table.Table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # the edge commands import this module without the splitter installed
    from edge_runtime.results import EdgeResult
    from splitter.cost.cut_cost import CutCost
    from splitter.cost.plan import Plan


def _kb(nbytes: int) -> str:
    return f"{nbytes / 1000:,.1f}"


def plan_table(plan: Plan, rows: Sequence[CutCost] | None = None) -> Table:
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
        *(["agree ≥"] if measured else []),
        "head ms",
        "encode ms",
        "KB sent",
        "transfer ms",
        "RTT ms",
        "decode ms",
        "tail ms",
        "reply ms",
        "total ms",
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
            f"{cost.decode_ms:.2f}",
            f"{cost.tail_ms:.2f}",
            f"{cost.result_ms:.1f}",
            f"{cost.total_ms:.1f}",
            note,
            style="bold green" if chosen else None,
        )
    return table


def requests_table(results: Sequence[tuple[str, EdgeResult, str]], title: str) -> Table:
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
        table.add_column(header, justify="left" if header in ("input", "vs unsplit") else "right")
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
    return table
