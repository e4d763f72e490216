"""The shipped smoke experiment end to end, for real: the model is built and profiled, bundles are
exported, a server process runs behind an emulated link (a fixed rate and a trace), the edge client
sends every request; then results.csv, meta.json, the summary and every figure are checked, and
`splitinfer experiment-plot` redraws them from the results alone."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiment.config import load_config
from experiment.results import FIELDS
from splitinfer.app import app

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[2] / "experiment" / "examples" / "smoke.toml"


def test_smoke_experiment_end_to_end(tmp_path: Path) -> None:
    config = load_config(SMOKE)
    out = tmp_path / "smoke"
    start = time.monotonic()
    result = CliRunner().invoke(app, ["experiment", str(SMOKE), "--out", str(out)])
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert elapsed < 60, f"the smoke experiment took {elapsed:.0f} s"
    assert "experiment summary" in result.output

    with (out / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    cells = len(config.models) * len(config.policies) * len(config.codecs) * len(config.conditions)
    assert len(rows) == cells * config.requests
    assert tuple(rows[0]) == FIELDS
    for row in rows:
        assert row["error"] == "", row["error"]
        # A noisy one-repeat profile may make the whole model on the device the plan: nothing is sent.
        assert float(row["total_ms"]) > 0 and (int(row["bytes_sent"]) > 0) == (row["cut"] != "output")
        assert float(row["total_ms"]) >= float(row["head_ms"]) + float(row["network_ms"])
        stages = ("head", "encode", "network", "decode", "queue", "tail", "outputs", "other")
        assert abs(sum(float(row[f"{s}_ms"]) for s in stages) - float(row["total_ms"])) <= 0.1, row
        assert row["agree"] in ("True", "False")
    # The device is 30× slower in real time: its head takes longer than the fast machine's would.
    assert min(float(r["head_ms"]) for r in rows) > 1.0
    trace_rates = {float(r["rate_mbps"]) for r in rows if r["condition"] == "step"}
    assert trace_rates and all(0.5 <= rate <= 8.5 for rate in trace_rates)
    assert {float(r["rate_mbps"]) for r in rows if r["condition"] == "4g-20ms"} == {5.85}

    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["device"]["slowdown"] == 30 and meta["git"]
    assert meta["device"]["edge_cpus"] and meta["device"]["server_cpus"]
    assert len(meta["cells"]) == cells
    assert all(not math.isnan(c["planner_ms"]) for c in meta["cells"])
    step = next(c for c in meta["cells"] if c["condition"] == "step")
    assert step["rate_series"]
    # What the cell replayed: from its first recorded request (after the warm-up) to its last's end,
    # and the trace's mean rate over exactly that stretch (not the whole file's).
    from netemu.traces import load_trace

    replayed, trace = step["replayed"], load_trace(config.conditions[1].trace)
    step_rows = [r for r in rows if r["condition"] == "step"]
    assert replayed["start_s"] == pytest.approx(float(step_rows[0]["t_s"]))
    end = replayed["start_s"] + replayed["duration_s"]
    assert end == pytest.approx(max(float(r["t_s"]) + float(r["total_ms"]) / 1e3 for r in step_rows))
    assert replayed["mean_rate_mbps"] == pytest.approx(
        trace.bytes_between(replayed["start_s"], end) * 8 / replayed["duration_s"] / 1e6
    )
    assert next(c for c in meta["conditions"] if c["name"] == "step")["trace_file_mean_mbps"] > 0
    for row in rows:
        assert float(row["bound_ms"]) <= float(row["oracle_ms"]) + 1e-9
    assert (out / "config.toml").read_text() == SMOKE.read_text()

    figures = out / "figures"
    stems = {p.stem for p in figures.iterdir()}
    assert any(s.startswith("latency_vs_cut_") for s in stems)
    assert any(s.startswith("timeline_") and s.endswith("_step") for s in stems)
    assert any(s.startswith("cdf_") for s in stems)
    for stem in stems:
        assert (figures / f"{stem}.png").stat().st_size > 0 and (figures / f"{stem}.svg").stat().st_size > 0
    summary = (out / "summary.csv").read_text()

    # Re-plot from the results alone: nothing but results.csv and meta.json is needed.
    for path in figures.iterdir():
        path.unlink()
    (out / "summary.csv").unlink()
    for kept in ("bundles", "profiles"):
        for path in sorted((out / kept).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    replot = CliRunner().invoke(app, ["experiment-plot", str(out)])
    assert replot.exit_code == 0, f"{replot.output}\n{replot.exception!r}"
    assert {p.stem for p in figures.iterdir()} == stems
    assert (out / "summary.csv").read_text() == summary
