"""Shared fixtures: tiny bundles (see tests/bundles.py) and a real server on a loopback port."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundles import build_bundle

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """`splitinfer serve` run in-process (CliRunner) points the root logger at the stderr the runner
    swapped in and closes afterwards (through cloud_runtime.logs' queue and writer thread); later
    tests' records must not go there. The handlers a test added are taken off, except pytest's
    own, which it manages."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    added = [h for h in root.handlers if h not in before and not type(h).__module__.startswith("_pytest")]
    for handler in added:
        root.removeHandler(handler)
    if added and "cloud_runtime.logs" in sys.modules:
        # Its writer thread writes what was queued within 50 ms: now, not into the next test's stderr.
        sys.modules["cloud_runtime.logs"]._stop_writer()
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the tiny model cut at `act` (one tensor), codec fp32."""
    return build_bundle(tmp_path_factory.mktemp("tiny")).path


@pytest.fixture(scope="session")
def dag_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model cut at (`act`, `c2`): two tensors cross, model id "tiny-dag"."""
    return build_bundle(tmp_path_factory.mktemp("tiny-dag"), cut=("act", "c2"), model_id="tiny-dag").path


@pytest.fixture(scope="session")
def tiny_server(tiny_bundle: Path, dag_bundle: Path) -> Iterator[str]:
    """A server for both tiny bundles on a free loopback port; yields its address."""
    with serve(ServerConfig([tiny_bundle, dag_bundle], threads=1, max_workers=4)) as running:
        yield running.address
