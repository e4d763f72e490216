"""The built-in task metrics: classifier agreement (top-1, top-5) and tensor closeness (rel-error).

For a classifier the answer a user sees is the class, so `top1` passes a sample when the split
model's most probable class is the unsplit model's, and `top5` when its five best classes are the
unsplit model's five (in any order). `rel-error:X` passes when the outputs' relative L2 error
(over all outputs together) is at most X: for models whose answer is the tensor itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protos.errors import SplitInferError
from splitter.metrics._registry import register_metric


def _scores(outputs: Sequence[np.ndarray]) -> np.ndarray:
    return np.asarray(outputs[0]).reshape(-1)


@register_metric("top1")
class Top1:
    name = "top1"

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool:
        return int(np.argmax(_scores(split))) == int(np.argmax(_scores(reference)))


@register_metric("top5")
class Top5:
    name = "top5"

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool:
        best = lambda outputs: set(np.argsort(-_scores(outputs), kind="stable")[:5].tolist())  # noqa: E731
        return best(split) == best(reference)


@register_metric("rel-error")
class RelError:
    def __init__(self, tolerance: str = "") -> None:
        try:
            self.tolerance = float(tolerance.rstrip("%")) / (100 if tolerance.endswith("%") else 1)
        except ValueError:
            self.tolerance = float("nan")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise SplitInferError(
                f"metric 'rel-error:{tolerance}': give the largest relative L2 error, like rel-error:0.01 or rel-error:1%"
            )
        self.name = f"rel-error:{self.tolerance:g}"

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool:
        num = sum(float(np.sum(np.square(s.astype(np.float64) - r))) for r, s in zip(reference, split))
        den = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
        return (num <= (self.tolerance**2) * den) if den > 0 else num == 0
