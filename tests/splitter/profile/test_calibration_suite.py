"""The calibration suite (splitter.profile.predict.suite): the committed files are what the generator
makes, and every micro-benchmark runs the kernels its manifest's features describe."""

from __future__ import annotations

import json

import pytest
from kernel_counts import actual_counts, predicted_counts

from edge_runtime.calibration import SUITE_DIR, load_suite, probe_block_size
from protos.calibration_suite import MANIFEST_FILE
from protos.errors import SplitInferError
from splitter.graph.graph import graph_from_onnx
from splitter.profile.predict.suite import benchmarks, build


def test_the_committed_suite_is_what_the_generator_makes() -> None:
    """Regenerate with `python -m splitter.profile.predict.suite` after changing it or op_features."""
    manifest, files = build()
    assert json.loads((SUITE_DIR / MANIFEST_FILE).read_text()) == json.loads(json.dumps(manifest))
    assert sorted(p.name for p in SUITE_DIR.glob("*.onnx")) == sorted(files)
    stale = [name for name, data in files.items() if (SUITE_DIR / name).read_bytes() != data]
    assert not stale


def test_every_benchmark_runs_the_kernels_its_features_describe() -> None:
    block = probe_block_size(1)
    wrong = []
    for name, model in benchmarks():
        graph = graph_from_onnx(model)
        if predicted_counts(graph, graph.ops, graph.outputs, block) != actual_counts(model):
            wrong.append(name)
    assert not wrong


def test_a_manifest_of_another_format_is_refused(tmp_path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(SplitInferError, match="format 99"):
        load_suite(tmp_path)
