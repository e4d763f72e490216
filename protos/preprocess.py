"""The input contract of an image bundle: how a photo becomes the model's input tensor.

It travels in the bundle manifest so the device, the server-side checks and the splitter's
verification all feed the model the same way (shorter side resized, centre crop, scale to [0, 1],
normalise per channel, NCHW float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocess:
    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 (or HxW, HxWx4) uint8 image → 1x3xSIZExSIZE float32."""
        from PIL import Image

        image = as_rgb(image)
        h, w = image.shape[:2]
        ratio = self.resize / min(h, w)
        new_w, new_h = max(self.size, round(w * ratio)), max(self.size, round(h * ratio))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        crop = resized[top : top + self.size, left : left + self.size].astype(np.float32) / 255.0
        crop = (crop - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(crop.transpose(2, 0, 1)[None])

    def to_dict(self) -> dict:
        return {"size": self.size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> ImagePreprocess:
        return cls(int(data["size"]), int(data["resize"]), tuple(data["mean"]), tuple(data["std"]))


def as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise SplitInferError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[:, :, :3])
    raise SplitInferError(f"an image must be HxW or HxWx3/4, got shape {image.shape}")


def load_image(path: str | Path) -> np.ndarray:
    """An image file (PNG, JPEG, ...) → HxWx3 uint8; SplitInferError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise SplitInferError(f"cannot read image {str(path)!r}: {err}") from err
