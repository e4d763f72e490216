"""Real photos for calibrating and checking models, from the images scikit-image ships in its
wheel, so nothing is downloaded.

Two disjoint sets: the evaluation set (astronaut, chelsea, coffee, rocket — the colour photos the
demo classifies) and the calibration set (immunohistochemistry, hubble_deep_field, retina,
colorwheel, and the greyscale camera, coins, page, text, repeated into three channels), from which
BatchNorm statistics are computed. Keeping them apart means the evaluation photos are never the
ones the statistics were fitted to. `skimage.data.cat` is left out: it is the same image as
`chelsea`.

Four photos are too few to measure agreement with: one flip is 25 %. `evaluation_images` widens
the evaluation set with six more of the wheel's images that the calibration set does not use (the
left view of the stereo motorcycle, clock, brick, grass, gravel, moon) and expands all ten
deterministically into views: crops at several scales and corners, some mirrored. Views are
labelled `photo:view`, so every figure can say that its inputs are views of ten photos, not
independent samples.
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


# Photos the evaluation views are also drawn from, after EVALUATION_NAMES.
MORE_EVALUATION_NAMES = ("motorcycle", "clock", "brick", "grass", "gravel", "moon")
# (share of the shorter side kept, where the crop sits, mirrored): view 0 is the photo itself.
VIEWS = (
    (1.0, "centre", False),
    (1.0, "centre", True),
    (0.8, "top-left", False),
    (0.8, "bottom-right", True),
    (0.65, "centre", False),
    (0.65, "top-right", True),
    (0.75, "bottom-left", False),
    (0.9, "centre", True),
    (0.85, "top-right", False),
    (0.85, "bottom-left", True),
    (0.7, "centre", True),
    (0.55, "centre", False),
    (0.6, "top-left", True),
    (0.6, "bottom-right", False),
    (0.95, "top-left", False),
    (0.5, "centre", True),
)


class Photo(NamedTuple):
    name: str
    image: np.ndarray  # HxWx3 uint8, read-only


def calibration_photos() -> list[Photo]:
    return [Photo(name, _load(name)) for name in CALIBRATION_NAMES]


def evaluation_photos() -> list[Photo]:
    return [Photo(name, _load(name)) for name in EVALUATION_NAMES]


def evaluation_images(count: int) -> list[Photo]:
    """`count` evaluation inputs: every photo's view 0 (the four EVALUATION_NAMES first), then
    every photo's view 1, and so on, so any prefix is spread over the photos. At most
    len(VIEWS) × 10 (160)."""
    names = (*EVALUATION_NAMES, *MORE_EVALUATION_NAMES)
    if not 1 <= count <= len(VIEWS) * len(names):
        raise ValueError(f"evaluation_images gives 1 to {len(VIEWS) * len(names)} images, asked for {count}")
    images = []
    for view in VIEWS:
        for name in names:
            if len(images) == count:
                return images
            images.append(_view(name, view))
    return images


def _view(name: str, view: tuple[float, str, bool]) -> Photo:
    share, anchor, mirrored = view
    image = _load(name)
    if share < 1.0:
        h, w = image.shape[:2]
        side = round(min(h, w) * share)
        top = {"top": 0, "bottom": h - side}.get(anchor.split("-")[0], (h - side) // 2)
        left = {"left": 0, "right": w - side}.get(anchor.split("-")[-1], (w - side) // 2)
        image = image[top : top + side, left : left + side]
    if mirrored:
        image = image[:, ::-1]
    parts = ([f"{anchor}-{share:g}"] if share < 1.0 else []) + (["mirrored"] if mirrored else [])
    return Photo(":".join([name, "-".join(parts)]) if parts else name, np.ascontiguousarray(image))


@functools.cache
def _load(name: str) -> np.ndarray:
    import skimage.data

    # stereo_motorcycle is a (left, right, disparity) triple; its left view is the photo.
    image = as_rgb(skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)())
    # The cached array is shared by every caller; read-only turns an accidental in-place edit
    # into an error instead of silently changing everyone's photo.
    image.setflags(write=False)
    return image
