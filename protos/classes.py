"""Reading a classifier's answer: the top classes of its logits, named by the bundle's labels.

Both sides print answers (the device's `splitinfer run`, the demo beside the unsplit model), so
the one rule lives here: scores are logits, turned into probabilities by a softmax over the
classes, and ties keep the lower index first, as argmax does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class TopClass(NamedTuple):
    index: int
    name: str | None
    score: float
    probability: float

    def __str__(self) -> str:
        """`Egyptian cat 0.38` when the class is named; else the index and the raw score, since an
        output nobody labelled is not known to be logits."""
        return f"{self.name} {self.probability:.2f}" if self.name is not None else f"{self.index} ({self.score:.3f})"


def top_classes(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[TopClass]:
    """The `k` most probable classes of one sample's logits (any shape; flattened)."""
    scores = np.asarray(logits, dtype=np.float64).reshape(-1)
    if labels is not None and len(labels) != scores.size:
        raise ValueError(f"{len(labels)} labels for {scores.size} scores")
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-scores, kind="stable")[:k]
    return [
        TopClass(int(i), labels[i] if labels is not None else None, float(scores[i]), float(probabilities[i]))
        for i in order
    ]
