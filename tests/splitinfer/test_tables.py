"""Every table the commands print, rendered at 80 and 120 columns: no line is longer, no number or
name is cut short ("…"), the key columns stay, and what was left out is said."""

from __future__ import annotations

import io
import re

import pytest
from handmade import cut, profile
from rich.console import Console

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from experiment.summary import AdaptiveRow, CellSummary, adaptive_table, summary_table
from splitinfer.tables import ADAPTIVE_DROP_ORDER, SUMMARY_DROP_ORDER, Fitted, plan_table, requests_table
from splitter.cost.network import NetworkModel
from splitter.cost.plan import plan

LONG_CUT = "_blocks.15._project_conv/Conv"


def render(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    text = console.file.getvalue()
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "…" not in text, text
    return text


@pytest.fixture(scope="module")
def a_plan():
    cuts = [
        cut("input", 0, 0.0, 30.0, 150_528),
        cut(LONG_CUT, 3, 12.345, 3.0, 3_000),
        cut("_blocks.15._project_conv.other/Conv", 4, 20.0, 1.0, 500),
        cut("output", 5, 1184.0, 0.0, 0),
    ]
    return plan(profile(cuts), NetworkModel(5.85e6, 40.0))


@pytest.mark.parametrize("width", [80, 120])
def test_the_plan_fits(a_plan, width: int) -> None:
    text = render(plan_table(a_plan), width)
    chosen = a_plan.chosen
    assert chosen.name == LONG_CUT
    row = next(line for line in text.splitlines() if LONG_CUT in line)
    assert f"{chosen.total_ms:.1f}" in row and "◀ chosen" in row
    assert "1184.0" in text  # the all-on-device baseline's total, whole
    assert f"left out at {width} columns: call ms, RTT ms" in " ".join(text.split())
    assert render(plan_table(a_plan), 200).count("left out") == 0


@pytest.mark.parametrize("width", [80, 120])
def test_a_runs_requests_fit(tiny_bundle, tiny_server, width: int) -> None:
    from bundles import tiny_input

    with EdgeClient(tiny_bundle, tiny_server, EdgeConfig(threads=1)) as client:
        results = [client.infer(tiny_input()) for _ in range(2)]
    rows = [
        (f"photo-with-a-long-name.png #{i}", r, "Egyptian cat 0.38 (unsplit 0.38), max |Δ| 3e-02")
        for i, r in enumerate(results)
    ]
    text = render(requests_table(rows, "mobilenet_v2_035 via 127.0.0.1:50051"), width)
    for i, r in enumerate(results):
        line = next(line for line in text.splitlines() if f"#{i}" in line)
        assert f"{r.timing.total_ms:.2f}" in line


def columns(text: str) -> list[str]:
    """Each column's cells, its wrapped lines joined: a name folded over two lines reads whole."""
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    return ["".join(cell.strip() for cell in column) for column in zip(*rows)]


def _cell(policy: str, condition: str) -> CellSummary:
    return CellSummary(
        "efficientnet_lite0", policy, "int8+zstd", condition, LONG_CUT, 120, 0, 0.98, 5.85,
        1234.5, 1200.25, 1500.75, 1600.5, 1190.0, "_blocks.12._project_conv/Conv", 1100.0, inputs=64,
    )  # fmt: skip


@pytest.mark.parametrize("width", [80, 120])
def test_the_experiment_summary_fits(width: int) -> None:
    rows = [_cell("neurosurgeon", "tmobile-lte"), _cell("best-static+race", "lte-3g-handover")]
    text = render(Fitted(summary_table(rows), SUMMARY_DROP_ORDER), width)
    cells = columns(text)
    for name in ("efficientnet_lite0", "best-static+race", "lte-3g-handover", LONG_CUT, "1234.5", "1.12"):
        # Whole: in its column (a name may fold onto a second line), or said once for every row.
        assert any(name in column for column in cells) or name in " ".join(text.split()), text


@pytest.mark.parametrize("width", [80, 120])
def test_the_adaptive_table_fits(width: int) -> None:
    rows = [
        AdaptiveRow("efficientnet_lite0", "int8+zstd", "att-lte", "adaptive+race", 812.25, 14, "best-static", LONG_CUT, 901.5, 700.0)
    ]  # fmt: skip
    text = render(Fitted(adaptive_table(rows), ADAPTIVE_DROP_ORDER), width)
    cells = columns(text)
    for name in ("812.2", "adaptive+race", "att-lte", "1.160"):
        # Whole: in its column (a name may fold onto a second line), or said once for every row.
        assert any(name in column for column in cells) or name in " ".join(text.split()), text


def test_plan_prints_the_fastest_cuts_and_the_baselines_unless_all(tmp_path) -> None:
    from cli_runs import assert_ok, cli

    cuts = [cut("input", 0, 0.0, 30.0, 150_528)]
    cuts += [cut(f"block.{i}", i, 1.0 + i, 20.0 - i, 40_000 - 2_000 * i) for i in range(1, 16)]
    cuts.append(cut("output", 16, 500.0, 0.0, 0))
    path = profile(cuts).save(tmp_path / "profile.json")
    excerpt = assert_ok(cli("plan", path, "--network", "wifi"))
    rows = re.findall(r"^│ (\S+) ", excerpt, re.MULTILINE)
    assert len(rows) == 12 and rows[0] == "input" and rows[-1] == "output"  # 10 fastest + 2 baselines
    assert "12 of 17 cuts shown; --all prints every one" in excerpt
    everything = assert_ok(cli("plan", path, "--network", "wifi", "--all"))
    assert len(re.findall(r"^│ (\S+) ", everything, re.MULTILINE)) == 17 and "--all prints" not in everything
