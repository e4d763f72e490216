"""The Graph is built once per run: `splitinfer export`'s walk (load, profile, plan, export, verify)
reads the one Graph of its ModelSource instead of rebuilding it from the same ONNX model."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from splitter.cost.network import PRESETS
from splitter.graph.graph import graph_from_onnx
from splitter.pipeline import export_model

MODEL, SHAPE = "mobilenet_v2_035", (1, 3, 96, 96)


@contextmanager
def graphs_built() -> Iterator[list[int]]:
    """Counts the calls of graph_from_onnx, on every thread, however a module imported it."""
    calls = [0]

    def count(frame, event, arg) -> None:
        if event == "call" and frame.f_code is graph_from_onnx.__code__:
            calls[0] += 1

    threading.setprofile(count)
    sys.setprofile(count)
    try:
        yield calls
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


def test_export_at_a_given_cut_builds_the_graph_once(tmp_path: Path) -> None:
    with graphs_built() as calls:
        export_model(MODEL, tmp_path / "b", cut="features.6", codec="fp16+zstd", input_shape=SHAPE, max_error=0.2)
    assert calls[0] == 1


@pytest.mark.slow
def test_export_that_profiles_and_plans_builds_the_graph_once(tmp_path: Path) -> None:
    with graphs_built() as calls:
        export_model(
            MODEL,
            tmp_path / "b",
            cut="auto",
            codec="fp16+zstd",
            network=PRESETS["wifi"],
            input_shape=SHAPE,
            max_error=0.2,
        )
    assert calls[0] == 1
