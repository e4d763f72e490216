"""Real photos for calibrating and checking models, from the images scikit-image ships in its
wheel, so nothing is downloaded.

Two disjoint sets: the evaluation set (astronaut, chelsea, coffee, rocket — the colour photos the
demo classifies) and the calibration set (immunohistochemistry, hubble_deep_field, retina,
colorwheel, and the greyscale camera, coins, page, text, repeated into three channels), from which
BatchNorm statistics are computed. Keeping them apart means the evaluation photos are never the
ones the statistics were fitted to. `skimage.data.cat` is left out: it is the same image as
`chelsea`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from protos.preprocess import as_rgb

EVALUATION_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
CALIBRATION_NAMES = (
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "page",
    "text",
)


class Photo(NamedTuple):
    name: str
    image: np.ndarray  # HxWx3 uint8, read-only


def calibration_photos() -> list[Photo]:
    return [Photo(name, _load(name)) for name in CALIBRATION_NAMES]


def evaluation_photos() -> list[Photo]:
    return [Photo(name, _load(name)) for name in EVALUATION_NAMES]


@functools.lru_cache(maxsize=None)
def _load(name: str) -> np.ndarray:
    import skimage.data

    image = as_rgb(getattr(skimage.data, name)())
    # The cached array is shared by every caller; read-only turns an accidental in-place edit
    # into an error instead of silently changing everyone's photo.
    image.setflags(write=False)
    return image
