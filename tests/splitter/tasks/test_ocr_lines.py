"""Text lines for the recogniser: long lines cut at word gaps into pieces its fixed input fits."""

from __future__ import annotations

import numpy as np
import pytest

from splitter.tasks.ocr import word_groups


def _line(word_widths: list[int], gap: int = 12, height: int = 40) -> np.ndarray:
    """White line image with black 'words' of the given widths separated by `gap` blank columns."""
    width = sum(word_widths) + gap * (len(word_widths) + 1)
    line = np.full((height, width, 3), 255, np.uint8)
    x = gap
    for w in word_widths:
        line[10:30, x : x + w] = 0
        x += w + gap
    return line


def test_a_line_that_fits_is_kept_whole() -> None:
    line = _line([60, 80])
    (piece,) = word_groups(line, max_ratio=6.0)
    assert piece is line


def test_a_long_line_is_cut_in_word_gaps_into_pieces_that_fit() -> None:
    widths = [60, 80, 50, 90, 70, 40, 100]
    line = _line(widths)
    pieces = word_groups(line, max_ratio=4.0)
    assert len(pieces) > 1
    assert all(p.shape[1] <= 4.0 * line.shape[0] for p in pieces)
    # Nothing is lost or cut through: every word's ink is in exactly one piece.
    assert sum(int((p[:, :, 0] == 0).any(axis=0).sum()) for p in pieces) == sum(widths)
    for piece in pieces:
        ink = (piece[:, :, 0] == 0).any(axis=0)
        assert not ink[0] and not ink[-1]


def test_a_word_wider_than_the_limit_is_left_out() -> None:
    pieces = word_groups(_line([60, 400, 60]), max_ratio=4.0)
    assert pieces and all(p.shape[1] <= 160 for p in pieces)
    assert sum(int((p[:, :, 0] == 0).any(axis=0).sum()) for p in pieces) == 120


@pytest.mark.parametrize("ratio", [2.0, 6.7])
def test_a_blank_line_gives_pieces_that_fit(ratio: float) -> None:
    blank = np.full((30, 600, 3), 255, np.uint8)
    assert all(p.shape[1] <= ratio * 30 for p in word_groups(blank, ratio))
