"""The input contract of an image bundle: how a photo becomes the model's input tensor.

It travels in the bundle manifest so the device, the server-side checks and the splitter's
verification all feed the model the same way, and so that another language can reproduce it bit
for bit. The steps, in order:

1. the image as RGB uint8 (greyscale repeated into three channels, alpha dropped);
2. resize so the shorter side is `resize` pixels: the new width and height are
   max(size, round(w · resize / min(h, w))) and likewise for h, with Python's `round` (half to
   even), by Pillow's BILINEAR filter, which is antialiased when it shrinks (its support widens
   with the scale factor: Pillow's `Image.resize(..., Image.BILINEAR)`, not a textbook bilinear
   interpolation, which moves MobileNetV2 logits by 0.12–0.24);
3. crop the centre size × size: top = (new_h − size) // 2, left = (new_w − size) // 2 (floor);
4. to float32, divided by 255, minus `mean`, divided by `std`, per channel (each step in float32
   arithmetic, `mean` and `std` rounded to float32 first);
5. HWC → NCHW with a batch of 1.

`to_dict` writes every one of these choices, the fixed ones by name, and `from_dict` refuses a
manifest naming any other (a device could not honour it).

Presets (`--preprocess`): `imagenet` (shorter side to 256 for a 224 input, ImageNet mean and
std), `unit` (shorter side to the input size, centre crop, values /255 in [0, 1] with no mean or
std: the value range YOLO-family detectors expect; they letterbox rather than crop, so give such a
model letterboxed tensors), `none` (the samples are already tensors), or a JSON file with the
fields of `to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The fixed steps of the contract, by name, as the manifest records them.
FIXED_STEPS = {
    "color": "RGB",
    "resize_filter": "pillow-bilinear-antialiased",
    "size_rounding": "python-round-half-even",
    "crop": "centre, offsets floored",
    "scale": "divide by 255",
    "layout": "NCHW",
    "dtype": "float32",
}
PRESETS = ("imagenet", "unit", "none")


@dataclass(frozen=True)
class ImagePreprocess:
    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not (self.size >= 1 and self.resize >= self.size):
            raise SplitInferError(
                f"preprocess: size {self.size} and resize {self.resize} must have 1 <= size <= resize"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise SplitInferError(f"preprocess: mean {self.mean} and std {self.std} need 3 values each, std > 0")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 (or HxW, HxWx4) uint8 image → 1x3xSIZExSIZE float32."""
        from PIL import Image

        image = as_rgb(image)
        h, w = image.shape[:2]
        ratio = self.resize / min(h, w)
        new_w, new_h = max(self.size, round(w * ratio)), max(self.size, round(h * ratio))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        crop = resized[top : top + self.size, left : left + self.size].astype(np.float32) / np.float32(255.0)
        crop = (crop - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(crop.transpose(2, 0, 1)[None])

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            **FIXED_STEPS,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ImagePreprocess:
        """Manifests written before the fixed steps were recorded followed them all the same."""
        for key, value in FIXED_STEPS.items():
            if data.get(key, value) != value:
                raise SplitInferError(f"preprocess {key} {data[key]!r} is not supported; only {value!r}")
        return cls(
            int(data["size"]), int(data["resize"]), tuple(map(float, data["mean"])), tuple(map(float, data["std"]))
        )


def preset(name: str, size: int) -> ImagePreprocess | None:
    """`imagenet`, `unit` or `none` (None: the samples are tensors) for a size × size input."""
    if name == "imagenet":
        return ImagePreprocess(size=size, resize=round(size * 256 / 224))
    if name == "unit":
        return ImagePreprocess(size=size, resize=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if name == "none":
        return None
    raise SplitInferError(f"--preprocess {name!r} is not {', '.join(PRESETS)} or a .json file")


def load_preprocess(spec: str, size: int) -> ImagePreprocess | None:
    """A preset name, or a JSON file of `to_dict`'s fields."""
    if not spec.endswith(".json"):
        return preset(spec, size)
    import json

    try:
        data = json.loads(Path(spec).read_text())
        return ImagePreprocess.from_dict(data)
    except FileNotFoundError:
        raise SplitInferError(f"--preprocess {spec!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SplitInferError(
            f"--preprocess {spec!r} is not a preprocessing file: {type(err).__name__}: {err}"
        ) from err


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
