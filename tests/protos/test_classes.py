"""Reading a classifier's answer: probabilities from logits, names from the bundle's labels."""

from __future__ import annotations

import numpy as np
import pytest

from protos.classes import top_classes


def test_top_classes_rank_by_logit_and_give_softmax_probabilities() -> None:
    logits = np.array([[0.0, 2.0, 1.0, 2.0]], np.float32)
    top = top_classes(logits, ("cat", "dog", "cup", "car"), k=3)
    # Ties keep the lower index first, as argmax does.
    assert [c.index for c in top] == [1, 3, 2]
    assert [c.name for c in top] == ["dog", "car", "cup"]
    expected = np.exp([2.0, 2.0, 1.0]) / np.exp(logits).sum()
    np.testing.assert_allclose([c.probability for c in top], expected, rtol=1e-6)
    assert str(top[0]) == f"dog {expected[0]:.2f}"


def test_unlabelled_outputs_print_the_index_and_the_raw_score() -> None:
    (best,) = top_classes(np.array([0.5, 3.25]), None, k=1)
    assert (best.index, best.name, best.score) == (1, None, 3.25)
    assert str(best) == "1 (3.250)"


def test_huge_logits_do_not_overflow() -> None:
    (best,) = top_classes(np.array([1e4, 0.0]), None, k=1)
    assert best.probability == pytest.approx(1.0)


def test_labels_must_match_the_scores() -> None:
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        top_classes(np.zeros(3), ("a", "b"))
