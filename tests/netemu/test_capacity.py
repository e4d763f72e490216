"""The bottleneck every user-space backend shares, on a clock the test drives: capacity accrues
only while busy and is accounted to the instant it accrues, a trace's opportunities are each used
once, a new shape keeps what accrued at the old one, and the delay line never reorders."""

from __future__ import annotations

import math
import random

import pytest

from netemu.capacity import (
    Bottleneck,
    DelayLine,
    FixedRate,
    TraceRate,
    Unlimited,
    capacity_for,
)
from netemu.shape import Shape
from netemu.traces import RateTrace


def test_a_fixed_rate_is_due_when_its_bytes_have_accrued() -> None:
    bottleneck = Bottleneck(Shape(rate_bps=8e6), 100.0)  # 1 MB/s
    bottleneck.start(100.5)  # idle until then: nothing banked
    assert bottleneck.credit == 0 and bottleneck.mark == 100.5
    due = bottleneck.due(1500)
    assert due == pytest.approx(100.5015)
    bottleneck.take(due, 1500)
    assert bottleneck.credit == 1500 and bottleneck.mark == due  # exactly, ahead of the clock
    bottleneck.spend(1500)
    bottleneck.accrue(due + 0.001)
    assert bottleneck.credit == pytest.approx(1000)
    bottleneck.stop()
    assert bottleneck.credit == 0  # an idle link banks no capacity


def test_the_header_overhead_raises_a_fixed_rate_not_a_trace() -> None:
    trace = RateTrace.from_rates([(0.0, 1e6)], period_s=1.0)
    fixed = capacity_for(Shape(rate_bps=8e6), 0.0, overhead=1.5)
    assert isinstance(fixed, FixedRate) and fixed.bytes_per_s == pytest.approx(1.5e6)
    traced = capacity_for(Shape(trace=trace), 0.0, overhead=1.5)
    assert isinstance(traced, TraceRate) and traced.take(1) == trace.packet_bytes
    assert isinstance(capacity_for(Shape(), 0.0), Unlimited)


def test_each_trace_opportunity_is_used_once() -> None:
    # mahimahi style: three 1500-byte opportunities in millisecond 1, one in millisecond 2.
    trace = RateTrace(opportunities_ms=[1.0, 1.0, 1.0, 2.0], period_ms=2.0)
    bottleneck = Bottleneck(Shape(trace=trace), 10.0)
    bottleneck.start(10.0)
    departures = []
    for _ in range(5):
        due = bottleneck.due(1500 - bottleneck.credit)
        bottleneck.take(due, 1500 - bottleneck.credit)
        bottleneck.spend(1500)
        departures.append(round((due - 10.0) * 1e3, 6))
    assert departures == [1.0, 1.0, 1.0, 2.0, 3.0]  # the fifth is the next period's first


def test_opportunities_pass_unused_while_the_link_is_idle() -> None:
    trace = RateTrace(opportunities_ms=[1.0, 2.0, 3.0, 4.0], period_ms=4.0)
    bottleneck = Bottleneck(Shape(trace=trace), 0.0)
    bottleneck.start(0.0025)  # idle through 1 ms and 2 ms
    assert bottleneck.due(1500) == pytest.approx(0.003)


def test_a_new_shape_keeps_what_accrued_while_busy() -> None:
    bottleneck = Bottleneck(Shape(rate_bps=8e6), 0.0)
    bottleneck.start(0.0)
    bottleneck.apply(Shape(rate_bps=80e6), 0.001, busy=True)
    assert bottleneck.credit == pytest.approx(1000)  # 1 ms at the old 1 MB/s
    assert bottleneck.due(11_000 - bottleneck.credit) == pytest.approx(0.002)  # then 10 MB/s
    idle = Bottleneck(Shape(rate_bps=8e6), 0.0)
    idle.apply(Shape(rate_bps=80e6), 0.001, busy=False)
    assert idle.credit == 0


def test_capacity_taken_early_is_not_counted_again_by_a_new_shape() -> None:
    bottleneck = Bottleneck(Shape(rate_bps=8e6), 0.0)  # 1 MB/s
    bottleneck.start(0.0)
    bottleneck.take(bottleneck.due(1500), 1500)  # up to 1.5 ms, taken at 1 ms
    bottleneck.apply(Shape(rate_bps=16e6), 0.001, busy=True)
    assert bottleneck.credit == 1500 and bottleneck.mark == pytest.approx(0.0015)
    assert bottleneck.due(1500) == pytest.approx(0.0015 + 0.00075)  # from the mark on, at 2 MB/s


def test_unlimited_capacity_is_due_at_once() -> None:
    bottleneck = Bottleneck(Shape(), 5.0)
    bottleneck.start(5.0)
    assert bottleneck.due(1e9) == 5.0
    bottleneck.take(5.0, 1e9)
    assert math.isinf(bottleneck.credit)
    bottleneck.spend(1e9)
    assert math.isinf(bottleneck.credit)
    bottleneck.apply(Shape(rate_bps=1e6), 6.0, busy=True)
    assert bottleneck.credit == 0  # a limit from now on, nothing left over from unlimited


def test_the_delay_line_draws_jitter_but_never_reorders() -> None:
    shape = Shape(delay_ms=10, jitter_ms=8)
    line: DelayLine[int] = DelayLine(random.Random(7))
    releases = [line.release_time(shape, departed=k * 0.001) for k in range(200)]
    assert releases == sorted(releases)
    delays_ms = [(r - k * 0.001) * 1e3 for k, r in enumerate(releases)]
    assert min(delays_ms) >= 2 - 1e-9 and max(delays_ms) > 12
    replay: DelayLine[int] = DelayLine(random.Random(7))
    assert [replay.release_time(shape, departed=k * 0.001) for k in range(200)] == releases
    for k, release in enumerate(releases[:3]):
        line.hold(release, k)
    assert line.next_release == releases[0]
    assert list(line.released(by=releases[1])) == [0, 1]
    assert bool(line) and list(line.released(by=math.inf)) == [2] and not line
    assert line.next_release == math.inf


def test_no_jitter_means_the_delay_exactly() -> None:
    line: DelayLine[int] = DelayLine(random.Random(0))
    assert line.release_time(Shape(delay_ms=25), departed=1.0) == pytest.approx(1.025)
    assert line.release_time(Shape(), departed=2.0) == 2.0
