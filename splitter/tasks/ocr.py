"""The OCR task: PaddleOCR's pipeline (rapidocr-onnxruntime) with its text detector split.

Accuracy of a split model is judged on its task, not on tensor error: the detector's output feeds
box extraction, the boxes feed the recogniser, and what a user sees is the text. `read` runs the
whole pipeline with the detector's inference replaced by any function (the unsplit model, head →
codec → tail in process, or an EdgeClient talking to a server), and `compare` scores two readings.

Documents go on a fixed square canvas (white, content scaled to fit, top-left): a bundle has static
shapes, and the detector's preprocessing keeps a 736×736 canvas at 736×736. Both the split and the
unsplit pipeline read the same canvas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from protos.errors import SplitInferError

CANVAS = 736
# Ground truth for the rendered documents: ordinary sentences, digits and punctuation.
SENTENCES = (
    "Split inference moves the tail to the server.",
    "The quick brown fox jumps over 13 lazy dogs.",
    "Bandwidth falls to 0.13 Mbit/s on CAT1 links.",
    "Every request ends with a result or an error.",
    "Invoice 2026-0417: total due 1,284.50 EUR",
    "Meeting moved to Thursday at 10:30 in room B.",
    "Keep the raw photo on the device by default.",
    "Activations are quantised to 8 bits per channel.",
    "Please return the signed form by 30 November.",
    "Train 8412 to Lyon departs from platform 7.",
    "Batch sizes of 1, 8 and 32 were measured.",
    "The head runs with one thread on the phone.",
)

Detector = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Line:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the detected quadrilateral
    text: str


@functools.lru_cache(maxsize=1)
def _engine():
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as err:
        raise SplitInferError("the OCR task needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from err
    return RapidOCR()


def on_canvas(image: np.ndarray, size: int = CANVAS) -> np.ndarray:
    from PIL import Image

    from protos.preprocess import as_rgb

    image = as_rgb(image)
    h, w = image.shape[:2]
    ratio = min(size / h, size / w)
    resized = Image.fromarray(image).resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(resized, (0, 0))
    return np.asarray(canvas)


def rendered_document(index: int, size: int = CANVAS) -> tuple[np.ndarray, str]:
    """A white page with 3–5 of the SENTENCES in Pillow's built-in font; (image, true text)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(index)
    font_size = int(rng.integers(22, 34))
    font = ImageFont.load_default(size=font_size)
    lines = [SENTENCES[i] for i in rng.choice(len(SENTENCES), size=int(rng.integers(3, 6)), replace=False)]
    page = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(20, 80))
    for line in lines:
        draw.text((int(rng.integers(10, 40)), y), line, font=font, fill=(0, 0, 0))
        y += int(font_size * rng.uniform(1.8, 2.6))
    return np.asarray(page), "\n".join(lines)


def documents(count: int) -> list[tuple[str, np.ndarray]]:
    """scikit-image's scanned page, then rendered documents; each on the canvas."""
    from skimage import data

    docs = [("skimage-page", on_canvas(data.page()))]
    docs += [(f"rendered-{i}", rendered_document(i)[0]) for i in range(count - 1)]
    return docs[:count]


def save_documents(folder, count: int) -> list[str]:
    """`documents(count)` written into `folder` as PNG files (a `--samples` folder for a document
    model such as layout_cdla); their names."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, image in documents(count):
        Image.fromarray(image).save(folder / f"{name}.png")
        names.append(f"{name}.png")
    return names


def word_groups(crop: np.ndarray, max_ratio: float) -> list[np.ndarray]:
    """A detected line split at the gaps between words into pieces at most `max_ratio` times as
    wide as high, in reading order.

    A bundle's recogniser has a fixed input width (48×320: ratio 6.7); the pipeline squeezes a
    longer line into it, and what the unsplit model then reads is noise ("Thehadwtrn" for "The
    head runs with one thread on the phone.") whose top two characters differ by 0.1–0.6% in
    probability, so any codec flips it. Pieces that fit are read as the model was trained to
    read. A word wider than the limit on its own is left out."""
    h, w = crop.shape[:2]
    if w <= h * max_ratio:
        return [crop]
    gray = crop.mean(axis=2) if crop.ndim == 3 else crop.astype(np.float64)
    ink = (gray < (gray.max() + gray.min()) / 2).any(axis=0)
    blank = np.flatnonzero(~ink)
    # Word gaps: ink-free runs of at least a quarter of the line height, cut in their middle.
    runs = np.split(blank, np.flatnonzero(np.diff(blank) > 1) + 1) if blank.size else []
    bounds = [0, *(int(r.mean()) for r in runs if len(r) >= max(2, h // 4) and r[0] > 0 and r[-1] < w - 1), w]
    pieces, start, limit = [], 0, h * max_ratio
    for previous, bound in zip(bounds, bounds[1:]):
        if bound - start > limit and previous > start:
            pieces.append(crop[:, start:previous])
            start = previous
    pieces.append(crop[:, start:])
    return [p for p in pieces if p.shape[1] <= limit]


def text_lines(count: int, max_ratio: float = 320 / 48) -> list[np.ndarray]:
    """`count` text-line images for the recogniser: the detector's lines on `documents`, cut into
    word groups that fit `max_ratio`."""
    engine = _engine()
    lines: list[np.ndarray] = []
    for _name, image in documents(count):  # every page has several lines: count pages are plenty
        boxes, _ = engine.text_det(image)
        for crop in engine.get_crop_img_list(image, list(boxes)) if boxes is not None else []:
            lines.extend(word_groups(crop, max_ratio))
            if len(lines) >= count:
                return lines[:count]
    raise SplitInferError(f"found only {len(lines)} text lines, {count} wanted")


@contextmanager
def detector_replaced(detector: Detector) -> Iterator[None]:
    engine = _engine()
    original = engine.text_det.infer
    engine.text_det.infer = detector
    try:
        yield
    finally:
        engine.text_det.infer = original


@dataclass(frozen=True)
class Reading:
    lines: tuple[Line, ...]
    # The detector's boxes before recognition: equal boxes mean equal crops, hence equal text.
    boxes: np.ndarray | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


def read(image: np.ndarray, detector: Detector | None = None, *, reference: Reading | None = None) -> Reading:
    """The OCR pipeline's reading of an image, with the detector's inference replaced if given.

    With a reference reading, recognition runs only if the detector's boxes differ from the
    reference's: the rest of the pipeline is deterministic, so equal boxes give equal text."""
    engine = _engine()
    with detector_replaced(detector) if detector is not None else nullcontext():
        boxes, _ = engine.text_det(image)
        if reference is not None and _same_boxes(boxes, reference.boxes):
            return reference
        result, _ = engine(image)
    lines = []
    for quad, text, _score in result or []:
        points = np.asarray(quad, dtype=np.float64)
        lines.append(Line((*points.min(axis=0), *points.max(axis=0)), text))
    return Reading(tuple(lines), boxes)


def _same_boxes(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(np.asarray(a), np.asarray(b))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


@dataclass(frozen=True)
class Agreement:
    same_text: bool
    # Mean over the reference's lines of the best IoU with any line of the other reading (1 = same).
    box_iou: float


def compare(reference: Reading, other: Reading) -> Agreement:
    if not reference.lines:
        return Agreement(reference.text == other.text, 1.0 if not other.lines else 0.0)
    ious = [max((_iou(line.box, o.box) for o in other.lines), default=0.0) for line in reference.lines]
    return Agreement(reference.text == other.text, float(np.mean(ious)))
