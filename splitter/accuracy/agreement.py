"""Task agreement per (cut, codec): on how many evaluation samples a split model's answer passed the
task metric against the unsplit model's, with a lower confidence bound.

This is the one measurement of accuracy (splitter.accuracy.evaluate measures it): the profile stores it,
and plan, export and the edge's decision table all admit a (cut, codec) by the same
`Agreement.lower`, so no step can refuse what another chose. A share alone says little on few
samples (one flip in 4 is 25 %), so the bound is Wilson's (scipy's
`binomtest(...).proportion_ci(method="wilson")`, 95 %): 64 of 64 passing bounds the agreement
below at 94.3 %, and only ~380 passing samples of 380 prove 99 %.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from protos import codec as wire_codec
from protos.errors import SplitInferError

CONFIDENCE = 0.95
# The accuracy budget when none is given: the agreement's lower bound at least 90 % (with 64
# evaluation samples, at most one whose answer changed).
DEFAULT_MAX_ERROR = 0.10


@dataclass(frozen=True)
class Agreement:
    """`passed` of `count` evaluation samples met the metric."""

    passed: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.passed <= self.count or self.count < 1:
            raise SplitInferError(f"agreement {self.passed} of {self.count} samples is not a count of samples")

    @property
    def share(self) -> float:
        return self.passed / self.count

    @property
    def lower(self) -> float:
        """The lower end of the 95 % Wilson interval of the agreement."""
        return wilson_lower(self.passed, self.count)

    def meets(self, max_error: float | None) -> bool:
        """Whether the accuracy budget admits this agreement: its lower bound is at least
        min_agreement(max_error). The one rule export applies; plan applies it through
        Constraints.min_agreement."""
        return self.lower >= min_agreement(max_error)

    def __str__(self) -> str:
        return f"{self.passed}/{self.count} ({self.share:.1%}, ≥ {self.lower:.1%} at 95 %)"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> Agreement:
        return cls(int(data["passed"]), int(data["count"]))


def min_agreement(max_error: float | None) -> float:
    """The lower bound an accuracy budget requires (the default budget when None)."""
    return 1 - (DEFAULT_MAX_ERROR if max_error is None else max_error)


def refuse_random_inputs(model_id: str, codec: str) -> None:
    """A lossy codec checked on random inputs proves nothing about the task: the one refusal."""
    raise SplitInferError(
        f"model {model_id!r} has no real samples: a lossy codec ({codec}) is checked on random inputs, which says "
        "nothing about the task; pass --samples PATH (profile and export), or --allow-random-samples"
    )


@functools.lru_cache(maxsize=4096)
def wilson_lower(passed: int, count: int, confidence: float = CONFIDENCE) -> float:
    from scipy.stats import binomtest

    return float(binomtest(passed, count).proportion_ci(confidence_level=confidence, method="wilson").low)


def samples_needed(min_agreement: float, confidence: float = CONFIDENCE) -> int:
    """How many samples, all passing, bound the agreement at `min_agreement` or above."""
    if not 0 <= min_agreement < 1:
        raise SplitInferError(f"no number of samples bounds the agreement at {min_agreement:.1%}")
    count = 1
    while wilson_lower(count, count, confidence) < min_agreement:
        count *= 2
    low, high = count // 2, count
    while low + 1 < high:
        middle = (low + high) // 2
        low, high = (middle, high) if wilson_lower(middle, middle, confidence) < min_agreement else (low, middle)
    return high


def encodings(codecs: Iterable[str]) -> dict[str, str | None]:
    """codec → the encoding whose measurement it shares (its encoding without compression); None
    for a lossless one, which agrees by construction."""
    parsed = {name: wire_codec.Codec.parse(name) for name in codecs}
    return {name: codec.encoding if codec.lossy else None for name, codec in parsed.items()}
