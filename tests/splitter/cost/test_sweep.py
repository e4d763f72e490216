"""Switching points: on a hand-made profile where the crossings are solvable by hand (each total is
fixed + bytes·8/bandwidth), the sweep finds them within its tolerance, for several policies."""

from __future__ import annotations

import pytest
from handmade import cut, profile

from protos.errors import SplitInferError
from splitter.cost.sweep import NO_CUT, sweep_bandwidth
from splitter.policies import Constraints

# Fixed parts (head + encode + RTT 10 + decode + tail): a 31.75, c 25.75, d 31.75 ms; output 40 ms.
PROFILE = profile([
    cut("a", 1, 1.0, 20.0, 40_000),
    cut("c", 3, 12.0, 3.0, 3_000),
    cut("d", 4, 20.0, 1.0, 500),
    cut("output", 5, 40.0, 0.0, 0),
])  # fmt: skip


def test_latency_switching_points_are_where_the_totals_cross() -> None:
    segments = sweep_bandwidth(PROFILE, 10.0, lo_bps=1e4, hi_bps=1e9)
    assert [s.cut for s in segments] == ["output", "d", "c"]
    # output = d: 40 = 31.75 + 4e6/bw → bw = 4e6/8.25; d = c: 31.75 + 4e6/bw = 25.75 + 24e6/bw → bw = 20e6/6.
    assert segments[0].hi_bps == pytest.approx(4e6 / 8.25, rel=2e-3)
    assert segments[1].lo_bps == pytest.approx(4e6 / 8.25, rel=2e-3)
    assert segments[1].hi_bps == pytest.approx(20e6 / 6, rel=2e-3)
    assert (segments[0].lo_bps, segments[-1].hi_bps) == (1e4, 1e9)
    assert segments[1].lo_total_ms == pytest.approx(40.0, rel=1e-2) and segments[-1].hi_total_ms == pytest.approx(
        25.75, rel=1e-3
    )
    assert "output" in segments[0].describe() and "kbit/s" in segments[0].describe()


def test_a_deadline_leaves_slow_uplinks_without_a_cut() -> None:
    segments = sweep_bandwidth(PROFILE, 10.0, constraints=Constraints(allow_edge_only=False, deadline_ms=35.0))
    # d meets 35 ms once 4e6/bw ≤ 3.25 ms.
    assert [s.cut for s in segments] == [NO_CUT, "d", "c"]
    assert segments[0].hi_bps == pytest.approx(4e6 / 3.25, rel=2e-3)
    assert "no cut satisfies" in segments[0].describe()


def test_other_policies_sweep_too() -> None:
    segments = sweep_bandwidth(PROFILE, 10.0, policy="throughput", constraints=Constraints(allow_edge_only=False))
    assert segments[-1].cut in {"a", "c"} and len(segments) >= 2
    with pytest.raises(SplitInferError, match="sweep range"):
        sweep_bandwidth(PROFILE, 10.0, lo_bps=1e6, hi_bps=1e3)
