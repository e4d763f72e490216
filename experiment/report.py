"""`report(results_dir)`: the summary table (summary.csv) and every figure of an experiment, from
its results.csv and meta.json only — what `splitinfer experiment` does after running and
`splitinfer experiment-plot` does again later."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiment.plots import draw_all
from experiment.results import META_JSON, RESULTS_CSV, read_results
from experiment.summary import (
    ADAPTIVE_CSV,
    SUMMARY_CSV,
    AdaptiveRow,
    CellSummary,
    adaptive_rows,
    summarize,
    write_adaptive,
    write_summary,
)
from protos.errors import SplitInferError


@dataclass(frozen=True)
class Report:
    summary: list[CellSummary]
    summary_csv: Path
    figures: list[Path]
    # Present when the experiment ran the adaptive policy beside static ones (adaptive.csv).
    adaptive: list[AdaptiveRow]


def report(results_dir: str | Path) -> Report:
    results_dir = Path(results_dir)
    meta_path = results_dir / META_JSON
    if not meta_path.is_file():
        raise SplitInferError(f"{str(results_dir)!r} has no {META_JSON}: not the output of `splitinfer experiment`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SplitInferError(f"{meta_path}: not valid JSON: {err}") from None
    records = read_results(results_dir / RESULTS_CSV)
    rows = summarize(records, meta)
    figures_dir = results_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    adaptive = adaptive_rows(rows)
    if adaptive:
        write_adaptive(adaptive, results_dir / ADAPTIVE_CSV)
    return Report(rows, write_summary(rows, results_dir / SUMMARY_CSV), draw_all(records, meta, figures_dir), adaptive)
