"""The calibration suite's manifest (protos.calibration_suite): the one schema the generator writes
and the device reads; one of another format, other features or incomplete entries is refused."""

from __future__ import annotations

import json

import pytest

from protos.calibration_suite import MANIFEST_FILE, check_suite_manifest, load_suite_manifest, suite_manifest
from protos.device_profile import FEATURES
from protos.errors import SplitInferError

ENTRY = {"name": "relu", "file": "relu.onnx", "inputs": {"x": [1, 8]}, "output_bytes": 32, "features": {"0": {}}}


def test_a_generated_manifest_is_read_back(tmp_path) -> None:
    manifest = suite_manifest("s-1", [ENTRY])
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_suite_manifest(tmp_path) == manifest and manifest["features"] == list(FEATURES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format 2 is not 1"),
        ({"features": ["one"]}, "reinstall splitinfer"),
        ({"benchmarks": [{"name": "relu"}]}, r"benchmark 'relu' lacks \['file'"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_fault(change: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        check_suite_manifest({**suite_manifest("s-1", [ENTRY]), **change}, "here")


def test_a_missing_manifest_says_so(tmp_path) -> None:
    with pytest.raises(SplitInferError, match="has no manifest.json"):
        load_suite_manifest(tmp_path)
