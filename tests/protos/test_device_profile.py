"""The DeviceProfile document's one schema (protos.device_profile): what the device writes is what
the planner reads."""

from __future__ import annotations

import pytest

from protos.device_profile import FEATURES, DeviceProfile
from protos.errors import SplitInferError
from protos.power import PowerModel

PROFILE = DeviceProfile(
    name="phone", threads=1, nchwc_block=8, overhead_ms=0.01, output_ms_per_byte=1e-7,
    coefficients={"Relu": (0.001, 0.0, 1e-7, 1e-7, 0.0)}, cold_ms={"Relu": 0.002},
    power=PowerModel(3.0, 4e-6, 0.4, "a meter"), engine={"engine": "onnxruntime", "version": "1", "threads": 1},
    machine={"processor": "arm"}, suite="s", timing={"repeats": 2}, profiler_stamp_ms=0.01,
)  # fmt: skip


def test_a_profile_survives_its_file_form(tmp_path) -> None:
    assert DeviceProfile.load(PROFILE.write(tmp_path / "phone.json")) == PROFILE
    assert PROFILE.to_dict()["features"] == list(FEATURES)
    assert "phone" in PROFILE.describe()


def test_a_profile_of_other_features_is_refused() -> None:
    with pytest.raises(SplitInferError, match="calibrate again"):
        DeviceProfile.from_dict({**PROFILE.to_dict(), "features": ["one"]})
