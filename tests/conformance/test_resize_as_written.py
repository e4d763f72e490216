"""The resize step as docs/contract.md writes it (Pillow's antialiased BILINEAR for 8-bit images:
its coefficients, fixed point, clipping and pass order), implemented from the text alone,
reproduces Pillow bit for bit: on the conformance images and on random sizes both ways. If this
fails after a Pillow upgrade, the spec (and every port of it) is out of date."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PREPROCESS = Path(__file__).resolve().parents[2] / "conformance" / "vectors" / "preprocess.json"
PRECISION_BITS = 22


def _coefficients(in_size: int, out_size: int) -> list[tuple[int, list[int]]]:
    """Per output index: the first input index and the fixed-point weights from it on."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's support, 1, widened by the shrink factor
    rows = []
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # int(): truncation toward zero, as C's cast
        count = min(int(center + support + 0.5), in_size) - first
        weights = [max(0.0, 1.0 - abs((first + i - center + 0.5) * (1.0 / filterscale))) for i in range(count)]
        total = sum(weights)
        weights = [w / total for w in weights] if total else weights
        rows.append((first, [math.trunc(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5)) for w in weights]))
    return rows


def _pass(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    source = np.moveaxis(image, axis, 0).astype(np.int64)
    out = np.empty((out_size, *source.shape[1:]), np.uint8)
    for index, (first, weights) in enumerate(_coefficients(source.shape[0], out_size)):
        total = np.full(source.shape[1:], 1 << (PRECISION_BITS - 1), np.int64)
        for offset, weight in enumerate(weights):
            total += source[first + offset] * weight
        out[index] = np.clip(total >> PRECISION_BITS, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_as_written(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    h, w = image.shape[:2]
    vertical_first = h - new_h > 0 and h - new_h > 2 * (w - new_w)
    passes = [(new_h, 0), (new_w, 1)] if vertical_first else [(new_w, 1), (new_h, 0)]
    for size, axis in passes:
        if size != image.shape[axis]:
            image = _pass(image, size, axis)
    return image


def _array(record: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record["base64"]), record["dtype"]).reshape(record["shape"])


def test_the_written_resize_reproduces_the_vectors() -> None:
    for image in json.loads(PREPROCESS.read_text())["images"]:
        for case in image["cases"]:
            new_w, new_h = case["resized_size"]
            assert np.array_equal(resize_as_written(_array(image["rgb"]), new_w, new_h), _array(case["resized"]))


@pytest.mark.parametrize("seed", range(4))
def test_the_written_resize_reproduces_pillow_on_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        new_w, new_h = (int(v) for v in rng.integers(1, 100, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        assert np.array_equal(resize_as_written(image, new_w, new_h), expected), (w, h, new_w, new_h)
