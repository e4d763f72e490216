"""Calibrating a DeviceProfile on the device (edge_runtime.calibration, `splitinfer calibrate`): a
quick calibration on a few of the suite's benchmarks, the fit, the errors for bad settings, and the
command run where torch, onnx and the splitter cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_runtime.calibration import Timing, calibrate, load_suite
from edge_runtime.calibration_fit import nnls
from protos.device_profile import FORMAT_VERSION, KIND
from protos.errors import SplitInferError
from splitinfer.app import app

QUICK = Timing(repeats=2, warmup=1, idle_gap_ms=0.0, rounds=1)
# A few benchmarks of different kinds: a pointwise Conv, two chain lengths of ReLU, a dense layer.
SUBSET = ["conv_pw_32x192_s1_28", "relu_64_56x4", "relu_64_56x1", "gemm_576x128"]


@pytest.fixture(scope="module")
def quick_document() -> dict:
    return calibrate(1, QUICK, name="quick", only=SUBSET)


def test_a_quick_calibration_fits_the_kinds_its_benchmarks_run(quick_document: dict) -> None:
    doc = quick_document
    assert (doc["kind"], doc["format_version"], doc["name"]) == (KIND, FORMAT_VERSION, "quick")
    assert doc["nchwc_block"] in (0, 8, 16)
    assert set(doc["measurements"]) == {*SUBSET, "overhead"}
    assert {"Relu", "gemm", "other"} <= set(doc["coefficients"])
    assert any(kind.startswith("conv_pw") for kind in doc["coefficients"])
    assert all(x >= 0 for coefficients in doc["coefficients"].values() for x in coefficients)
    assert 0 < doc["overhead_ms"] < 5
    assert all(t["wall_ms"] > 0 for t in doc["measurements"].values())
    assert doc["engine"]["threads"] == 1 and doc["timing"]["repeats"] == 2
    json.dumps(doc)  # plain JSON all the way down


def test_nnls_finds_a_non_negative_solution_exactly_and_clips_where_least_squares_goes_negative() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0.1, 1.0, (30, 5))
    truth = np.array([0.5, 0.0, 2.0, 0.1, 0.0])
    np.testing.assert_allclose(nnls(a, a @ truth), truth, atol=1e-9)
    # Unconstrained, this one's second coefficient is negative; constrained, it is 0 and the first takes the fit.
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = np.array([3.0, 2.0, 1.0])
    assert np.linalg.lstsq(a, b, rcond=None)[0][1] < 0
    np.testing.assert_allclose(nnls(a, b), [2.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads must be a positive integer, got 0"),
        ({"timing": Timing(clock="cpu"), "threads": 2}, "needs threads=1, got 2"),
        ({"only": ["conv_nonexistent"]}, "no benchmark named 'conv_nonexistent'"),
        ({"directory": Path("/nonexistent/suite")}, "has no manifest.json"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        calibrate(**{"threads": 1, "timing": QUICK, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"repeats": 0}, "repeats must be at least 1, got 0"), ({"clock": "gpu"}, "clock 'gpu' is not one of wall, cpu")],
)
def test_bad_timings_are_refused_naming_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        Timing(**kwargs)


def test_the_suite_ships_a_manifest_naming_every_file() -> None:
    from edge_runtime.calibration import SUITE_DIR

    manifest = load_suite()
    assert all((SUITE_DIR / entry["file"]).is_file() for entry in manifest["benchmarks"])


def test_the_command_refuses_zero_threads_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["calibrate", "--threads", "0", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "'--threads': 0 is not at least 1" in result.output


def test_the_command_refuses_bad_power_figures() -> None:
    result = CliRunner().invoke(app, ["calibrate", "--idle-w", "-1", "--only", SUBSET[0]])
    assert result.exit_code == 2
    assert "'--idle-w': -1 is not at least 0" in result.output


NO_TORCH = r"""
import importlib.abc, sys

BLOCKED = {"torch", "torchvision", "splitter", "onnx"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the edge install")
sys.meta_path.insert(0, Blocker())

from splitinfer.app import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""


def test_the_command_calibrates_with_the_edge_install_alone(tmp_path: Path) -> None:
    out = tmp_path / "phone.json"
    args = ["calibrate", "--threads", "1", "--out", str(out), "--name", "phone", "--rounds", "1", "--repeats", "2", "--only", ",".join(SUBSET),
            "--compute-w", "3.5", "--radio-uj-per-byte", "4", "--power-source", "measured with a USB meter"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "NCHWc block" in done.stdout and "phone.json" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["name"] == "phone" and set(doc["measurements"]) == {*SUBSET, "overhead"}
    assert (doc["power"]["compute_w"], doc["power"]["radio_j_per_byte"], doc["power"]["idle_w"]) == (3.5, 4e-6, 0.5)
    assert doc["power"]["source"].startswith("measured with a USB meter; idle_w: literature defaults")
