"""The preprocessing contract: every step recorded by name, presets, files, and refusals of what a
device could not reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protos.errors import SplitInferError
from protos.preprocess import FIXED_STEPS, ImagePreprocess, load_preprocess, preset


def test_the_record_names_every_step_and_reads_back() -> None:
    record = ImagePreprocess().to_dict()
    assert {k: record[k] for k in FIXED_STEPS} == FIXED_STEPS
    assert (
        record["resize_filter"] == "pillow-bilinear-antialiased" and record["size_rounding"] == "python-round-half-even"
    )
    assert ImagePreprocess.from_dict(record) == ImagePreprocess()
    # Manifests from before the steps were named load as they were written.
    old = {"size": 224, "resize": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ImagePreprocess.from_dict(old) == ImagePreprocess()


def test_a_step_no_device_follows_is_refused() -> None:
    record = {**ImagePreprocess().to_dict(), "resize_filter": "bicubic"}
    with pytest.raises(SplitInferError, match="preprocess resize_filter 'bicubic' is not supported"):
        ImagePreprocess.from_dict(record)


def test_presets() -> None:
    assert preset("imagenet", 224) == ImagePreprocess()
    unit = preset("unit", 640)
    assert (unit.size, unit.resize, unit.mean, unit.std) == (640, 640, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert preset("none", 224) is None
    image = np.full((20, 30, 3), 255, np.uint8)
    assert np.all(preset("unit", 16)(image) == 1.0)
    with pytest.raises(SplitInferError, match="--preprocess 'yolo' is not imagenet, unit, none or a .json file"):
        preset("yolo", 224)


def test_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "pre.json"
    path.write_text(json.dumps({**ImagePreprocess(size=96, resize=110).to_dict()}))
    assert load_preprocess(str(path), 96) == ImagePreprocess(size=96, resize=110)
    path.write_text("{}")
    with pytest.raises(SplitInferError, match="is not a preprocessing file: KeyError"):
        load_preprocess(str(path), 96)
    with pytest.raises(SplitInferError, match="does not exist"):
        load_preprocess(str(tmp_path / "missing.json"), 96)
    with pytest.raises(SplitInferError, match="size 300 and resize 200"):
        ImagePreprocess(size=300, resize=200)
