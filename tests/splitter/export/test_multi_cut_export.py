"""export_multi_cut refuses what it cannot carry, naming it: cuts whose heads do not nest, and a
decision table that does not match the cuts."""

from __future__ import annotations

from pathlib import Path

import pytest
from multicut import DECISIONS, decision_table, multi_input, multi_model

from protos.errors import SplitInferError
from splitter.export.bundle import export_multi_cut
from splitter.graph.cuts import Cut, enumerate_cuts
from splitter.graph.graph import graph_from_onnx
from splitter.sources import ModelSource

SOURCE = ModelSource("multi", multi_model(), None)
SAMPLES = [("random-0", {"x": multi_input(0)})]


def _cuts() -> list[Cut]:
    return enumerate_cuts(graph_from_onnx(SOURCE.model), include_input=True)


def test_cuts_that_are_not_prefixes_are_refused(tmp_path: Path) -> None:
    odd = Cut("branch", 2, ("b",), head_ops=("a", "b"))
    with pytest.raises(SplitInferError, match=r"prefix cuts only .*\['branch'\]"):
        export_multi_cut(SOURCE, [*_cuts(), odd], tmp_path / "b", SAMPLES, decision_table(DECISIONS))
    assert not (tmp_path / "b").exists()


def test_the_decision_table_must_cover_exactly_the_cuts(tmp_path: Path) -> None:
    some = [c for c in _cuts() if c.name in ("a", "pooled")]
    with pytest.raises(
        SplitInferError, match=r"names cuts \['b', 'c', 'input', 'output'\] that the bundle does not carry"
    ):
        export_multi_cut(SOURCE, some, tmp_path / "x", SAMPLES, decision_table(DECISIONS))
    fewer = {**DECISIONS, "entries": [e for e in DECISIONS["entries"] if e["cut"] != "pooled"]}
    with pytest.raises(SplitInferError, match=r"no entry for cuts \['pooled'\]"):
        export_multi_cut(SOURCE, _cuts(), tmp_path / "x", SAMPLES, decision_table(fewer))


def test_a_subset_of_cuts_runs_fewer_segments(tmp_path: Path) -> None:
    some = [c for c in _cuts() if c.name in ("a", "pooled")]
    decisions = {**DECISIONS, "entries": [e for e in DECISIONS["entries"] if e["cut"] in ("a", "pooled")]}
    bundle, checks = export_multi_cut(SOURCE, some, tmp_path / "two", SAMPLES, decision_table(decisions))
    # Two segments: x → a, then a → pooled (b and c inside the second, stored once).
    assert [s.outputs for s in bundle.manifest.segments] == [("a",), ("pooled",)]
    assert bundle.manifest.segment_counts == (1, 2)
    assert checks["a"]["fp32"].max_abs_diff_fp32 <= 1e-5 and set(checks["a"]) == {"fp32", "fp16"}
