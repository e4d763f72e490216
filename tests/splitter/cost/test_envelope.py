"""The lower envelope of latency lines: on hand-made choices whose crossings are solvable by hand it
finds them exactly, keeps a choice that wins only between two points of the sweep's grid, and
clips to the planned range."""

from __future__ import annotations

import numpy as np
import pytest
from handmade import cut, profile

from protos.decisions import Choice
from protos.errors import SplitInferError
from splitter.cost.envelope import lower_envelope
from splitter.cost.sweep import sweep_bandwidth
from splitter.export.adaptive import adaptive_decisions, admitted_choices, carried_cuts
from splitter.policies import Constraints

# Fixed parts (head + encode + RTT 10 + decode + tail): a 31.75, c 25.75, d 31.75 ms; output 40 ms.
PROFILE = profile([
    cut("a", 1, 1.0, 20.0, 40_000),
    cut("c", 3, 12.0, 3.0, 3_000),
    cut("d", 4, 20.0, 1.0, 500),
    cut("output", 5, 40.0, 0.0, 0),
])  # fmt: skip


def test_the_envelope_switches_exactly_where_the_totals_cross() -> None:
    choices = admitted_choices(PROFILE, ["int8+zstd"])
    segments = lower_envelope(choices, 10.0, 1e4, 1e9)
    assert [s.choice.cut for s in segments] == ["output", "d", "c"]
    # output = d: 40 = 31.75 + 4e6/bw; d = c: 31.75 + 4e6/bw = 25.75 + 24e6/bw.
    assert segments[0].hi_bps == pytest.approx(4e6 / 8.25, rel=1e-12)
    assert segments[1].lo_bps == segments[0].hi_bps and segments[2].lo_bps == segments[1].hi_bps
    assert segments[1].hi_bps == pytest.approx(20e6 / 6, rel=1e-12)
    assert (segments[0].lo_bps, segments[-1].hi_bps) == (1e4, 1e9)
    # Clipped to a range inside one segment, one choice is left.
    assert [s.choice.cut for s in lower_envelope(choices, 10.0, 1e6, 2e6)] == ["d"]


def test_a_choice_that_wins_between_two_grid_points_is_kept() -> None:
    def split(name: str, fixed_ms: float, nbytes: int) -> Choice:
        return Choice(name, "int8+zstd", fixed_ms, 0.0, nbytes, 0.0, 0.0)

    # "narrow" is 0.01 ms below the crossing of "early" and "late" (at 1 Mbit/s, 80 ms): the fastest
    # only within about ±0.03 % of 1 Mbit/s.
    early, late = split("early", 0.0, 10_000), split("late", 75.0, 625)
    narrow = split("narrow", 80.0 - 0.01 - 5_000 * 8e-3, 5_000)
    segments = lower_envelope([early, narrow, late], 0.0, 1e4, 1e9)
    assert [s.choice.cut for s in segments] == ["early", "narrow", "late"][::-1]
    assert segments[1].lo_bps < 1e6 < segments[1].hi_bps and segments[1].hi_bps / segments[1].lo_bps < 1.001
    # At every rate, the envelope's choice is the fastest of all.
    for rate in np.geomspace(1e4, 1e9, 2001):
        best = min(c.predicted_ms(rate, 0.0) for c in (early, narrow, late))
        on = next(s.choice for s in segments if s.lo_bps <= rate <= s.hi_bps)
        assert on.predicted_ms(rate, 0.0) == pytest.approx(best, rel=1e-12)


def test_the_decision_table_holds_the_envelope_and_the_device_alone() -> None:
    # Planned for fast links only, the device alone is never the fastest but is still carried:
    # the device answers with it when the server cannot, and races with it.
    table = adaptive_decisions(PROFILE, 10.0, ["int8+zstd", "fp32"], lo_bps=5e6, hi_bps=5e7)
    assert carried_cuts(table) == ["c", "output"]
    (segments,) = table.switching_points.values()
    assert [(cut, codec) for _, _, cut, codec in segments] == [("c", "int8+zstd")]
    # fp32 costs nothing to code: above 96 Mbit/s it beats int8+zstd at the same cut.
    fast = adaptive_decisions(PROFILE, 10.0, ["int8+zstd", "fp32"], lo_bps=5e6, hi_bps=1e9)
    (segments,) = fast.switching_points.values()
    assert [(cut, codec) for _, _, cut, codec in segments] == [("c", "int8+zstd"), ("c", "fp32")]
    assert segments[0][1] == pytest.approx(96e6, rel=1e-12)
    # A cut the constraints refuse is never carried, whatever the rate.
    deep = adaptive_decisions(PROFILE, 10.0, ["int8+zstd"], constraints=Constraints(min_head_ops=4))
    assert carried_cuts(deep) == ["d", "output"]
    with pytest.raises(SplitInferError, match="0 < lo < hi"):
        adaptive_decisions(PROFILE, 10.0, ["int8+zstd"], lo_bps=2e6, hi_bps=1e6)


def test_the_sweep_and_the_envelope_agree_where_the_grid_is_fine_enough() -> None:
    segments = sweep_bandwidth(PROFILE, 10.0, lo_bps=1e4, hi_bps=1e9)
    exact = lower_envelope(admitted_choices(PROFILE, ["int8+zstd"]), 10.0, 1e4, 1e9)
    assert [s.cut for s in segments] == [s.choice.cut for s in exact]
    for grid, envelope in zip(segments, exact):
        assert grid.hi_bps == pytest.approx(envelope.hi_bps, rel=2e-3)
