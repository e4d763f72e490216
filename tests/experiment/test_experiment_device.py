"""The emulated device: a stretched head takes `factor` × its own time; cloud-only alone may send
the raw input; the grid has one cell per (model, policy, codec, condition)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.local_tail import Cancel, Cancelled
from experiment.config import load_config
from experiment.device import DeviceSetup, PacedEncoder, PacedHead, PacedLocalTail, StretchedHead, StretchedLocalTail
from experiment.grid import cells, constraints_for
from protos.codec import Codec

EXAMPLES = Path(__file__).resolve().parents[2] / "experiment" / "examples"


class BusyHead:
    def run(self, inputs):
        start = time.perf_counter()
        while time.perf_counter() - start < 0.01:
            pass
        return {"cut": inputs["x"] * 2}


def test_stretched_head_takes_factor_times_as_long() -> None:
    head = StretchedHead(BusyHead(), 4.0)
    start = time.perf_counter()
    out = head.run({"x": np.ones(2)})
    elapsed = time.perf_counter() - start
    assert np.array_equal(out["cut"], np.full(2, 2.0))
    assert 0.04 <= elapsed < 0.2


class CutHead:
    """A multi-cut head: 10 ms of work whatever the cut."""

    def run(self, inputs, cut):
        return {cut: BusyHead().run(inputs)["cut"]}


def test_a_paced_head_takes_its_cut_profiled_time() -> None:
    targets = {"early": 40.0, "late": 120.0}
    single = PacedHead(BusyHead(), targets, "early")
    start = time.perf_counter()
    single.run({"x": np.ones(2)})
    assert 0.04 <= time.perf_counter() - start < 0.1
    multi = PacedHead(CutHead(), targets)
    start = time.perf_counter()
    out = multi.run({"x": np.ones(2)}, "late")
    assert 0.12 <= time.perf_counter() - start < 0.2 and list(out) == ["late"]
    # A run longer than its pace is not cut short.
    start = time.perf_counter()
    PacedHead(BusyHead(), {"early": 1.0}, "early").run({"x": np.ones(2)})
    assert time.perf_counter() - start >= 0.01


class Encoder:
    def encode(self, tensors, codec, cut, clamps):
        return [(name, codec.name) for name in tensors]


class RestOfModel:
    """The rest of the model: 10 ms of work."""

    def run(self, tensors, cut, cancel=None):
        return {"logits": BusyHead().run(tensors)["cut"]}


def test_paced_encodings_and_local_runs_take_their_targets() -> None:
    encoder = PacedEncoder(Encoder(), {("early", "int8+zstd"): 30.0})
    start = time.perf_counter()
    assert encoder.encode({"t": np.ones(2)}, Codec.parse("int8+zstd"), "early", {}) == [("t", "int8+zstd")]
    assert 0.03 <= time.perf_counter() - start < 0.08
    tail = PacedLocalTail(RestOfModel(), {"early": 80.0})
    start = time.perf_counter()
    assert list(tail.run({"x": np.ones(2)}, "early", Cancel())) == ["logits"]
    assert 0.08 <= time.perf_counter() - start < 0.15
    start = time.perf_counter()
    StretchedLocalTail(RestOfModel(), 5.0).run({"x": np.ones(2)}, "early")
    assert 0.05 <= time.perf_counter() - start < 0.12


def test_a_cancel_ends_a_paced_local_run_at_once() -> None:
    cancel = Cancel()
    tail = PacedLocalTail(RestOfModel(), {"early": 5_000.0})
    threading.Timer(0.05, cancel.cancel).start()
    start = time.perf_counter()
    with pytest.raises(Cancelled):
        tail.run({"x": np.ones(2)}, "early", cancel)
    assert time.perf_counter() - start < 0.5


def test_only_the_stretch_method_stretches() -> None:
    assert DeviceSetup("stretch", 30.0, 1, (0,), (1,)).stretch_factor == 30.0
    assert DeviceSetup("cgroup", 30.0, 1, (0,), (1,)).stretch_factor == 1.0
    assert DeviceSetup("paced", 30.0, 1, (0,), (1,)).stretch_factor == 1.0


def test_grid_and_constraints_of_the_classic_experiment() -> None:
    config = load_config(EXAMPLES / "classic.toml")
    grid = cells(config)
    assert len(grid) == 3 * 4 and len({(c.policy, c.condition.name) for c in grid}) == 12
    assert constraints_for(config, "cloud-only").allow_raw_input
    assert not constraints_for(config, "neurosurgeon").allow_raw_input
