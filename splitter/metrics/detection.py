"""`yolo-boxes`: a detector's split answer agrees when it finds the same objects.

The outputs of YOLOv5- and YOLOv8-style heads are decoded as Ultralytics does by default: boxes
as (centre x, centre y, width, height), a class score per class (YOLOv5 multiplies them by its
objectness), detections kept at score ≥ 0.25, then greedy non-maximum suppression per class at
IoU 0.45. A sample passes when every box of the unsplit model has its own box of the same class
in the split model's answer with IoU ≥ 0.5, and the split model finds no box more.

The layout tells the two apart: YOLOv8 writes (1, 4 + classes, boxes), with fewer rows than
boxes; YOLOv5 writes (1, boxes, 5 + classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from splitter.metrics._registry import register_metric

SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MATCH_IOU = 0.5


def detections(output: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, x0 y0 x1 y1) of each box one YOLO output keeps, highest score first."""
    rows = np.asarray(output, dtype=np.float64).reshape(output.shape[-2], output.shape[-1])
    if rows.shape[0] < rows.shape[1]:  # YOLOv8: one column per box
        rows = rows.T
        scores = rows[:, 4:]
    else:  # YOLOv5: objectness, then the class scores
        scores = rows[:, 5:] * rows[:, 4:5]
    classes, best = scores.argmax(axis=1), scores.max(axis=1)
    keep = best >= SCORE_THRESHOLD
    centre, size = rows[keep, 0:2], rows[keep, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    kept: list[tuple[int, np.ndarray]] = []
    for index in np.argsort(-best[keep], kind="stable"):
        cls, box = int(classes[keep][index]), boxes[index]
        if all(c != cls or iou(box, other) <= NMS_IOU for c, other in kept):
            kept.append((cls, box))
    return kept


def iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@register_metric("yolo-boxes")
class YoloBoxes:
    name = "yolo-boxes"

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool:
        expected, found = detections(reference[0]), detections(split[0])
        if len(found) != len(expected):
            return False
        unmatched = list(found)
        for cls, box in expected:
            match = max(
                (i for i, (c, b) in enumerate(unmatched) if c == cls and iou(box, b) >= MATCH_IOU),
                key=lambda i: iou(box, unmatched[i][1]),
                default=None,
            )
            if match is None:
                return False
            unmatched.pop(match)
        return True
