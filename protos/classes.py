"""Reading a classifier's answer: the top classes of its logits, named by the bundle's labels.

Both sides print answers (the device's `splitinfer run`, the demo beside the unsplit model), so
the one rule lives here: scores are logits, turned into probabilities by a softmax over the
classes, and ties keep the lower index first, as argmax does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from protos.result_form import TOP_K_INDICES, TOP_K_VALUES


class TopClass(NamedTuple):
    index: int
    name: str | None
    score: float
    probability: float

    def __str__(self) -> str:
        """`Egyptian cat 0.38` when the class is named; else the index and the raw score, since an
        output nobody labelled is not known to be logits."""
        if self.name is None:
            return f"{self.index} ({self.score:.3f})"
        # A server-side top-k carries k scores, too few for a softmax over every class.
        return (
            f"{self.name} {self.probability:.2f}"
            if np.isfinite(self.probability)
            else f"{self.name} ({self.score:.3f})"
        )


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


def answer_classes(outputs: Mapping[str, np.ndarray], labels: Sequence[str] | None, k: int = 5) -> list[TopClass]:
    """The top classes of a result: its logits, or the top-k the server sent in their place
    (protos.result_form), whose probabilities are unknown (NaN)."""
    values = next((name for name in outputs if name.endswith(TOP_K_VALUES)), None)
    if values is None:
        return top_classes(next(iter(outputs.values())), labels, k)
    indices = outputs[values.removesuffix(TOP_K_VALUES) + TOP_K_INDICES].reshape(-1)[:k]
    scores = outputs[values].reshape(-1)[:k]
    return [
        TopClass(int(i), labels[i] if labels is not None else None, float(score), math.nan)
        for i, score in zip(indices, scores)
    ]
