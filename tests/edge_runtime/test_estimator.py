"""The link estimator (edge_runtime.estimator, edge_runtime.delivery_rate) on replayed time, and once
for real: the adaptive client through netemu's user-space link on loopback, across a stall."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from multicut import multi_input

from edge_runtime.client import EdgeClient
from edge_runtime.estimator import LinkEstimator
from netemu import LinkEmulator, RateTrace, Shape
from protos.errors import SplitInferError

RTT_S = 0.040
SERVER_S = 0.008


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _estimator(clock: Clock, **options) -> LinkEstimator:
    estimator = LinkEstimator(clock=clock, **options)
    estimator.observe_rtt(RTT_S)
    return estimator


def _request(
    estimator: LinkEstimator, clock: Clock, nbytes: int, rate_bps: float, *, stall_s: float = 0.0, rtt_s: float = RTT_S
) -> None:
    """One request of `nbytes` over a link at `rate_bps` (after `stall_s` without any) and a path
    of `rtt_s`, its reply observed when it comes; the device's head took 40 ms before it."""
    clock.now += 0.040
    rpc_s = stall_s + nbytes * 8 / rate_bps + rtt_s + SERVER_S
    clock.now += rpc_s
    estimator.observe_transfer(nbytes, rpc_s, SERVER_S)


def test_a_stall_is_forgotten_within_a_second_of_requests_and_at_once_by_a_lone_one() -> None:
    clock = Clock()
    estimator = _estimator(clock)
    for _ in range(10):
        _request(estimator, clock, 58_000, 4e6)
    assert estimator.estimate().bandwidth_bps == pytest.approx(4e6)
    _request(estimator, clock, 58_000, 4e6, stall_s=3.0)
    assert estimator.estimate().bandwidth_bps < 0.5e6  # the stall is what the link just did
    # Back to 4 Mbit/s: requests crossing at it for a horizon (1 s) outweigh the stall.
    stall_end = clock.now
    while estimator.estimate().bandwidth_bps < 0.8 * 4e6:
        _request(estimator, clock, 58_000, 4e6)
    assert clock.now - stall_end <= 1.1
    # After another stall the device ran everything itself; one exploration 3 s later is the
    # estimate by itself (a harmonic mean of the last five would still hold the stall).
    _request(estimator, clock, 58_000, 4e6, stall_s=3.0)
    clock.now += 3.0
    _request(estimator, clock, 58_000, 5e6)
    assert estimator.estimate().bandwidth_bps == pytest.approx(5e6)


@pytest.mark.parametrize(("before_bps", "after_bps"), [(2e6, 8e6), (8e6, 1e6)])
def test_a_rate_step_is_followed_within_a_horizon(before_bps: float, after_bps: float) -> None:
    clock = Clock()
    estimator = _estimator(clock)
    for _ in range(10):
        _request(estimator, clock, 32_000, before_bps)
    step = clock.now
    while abs(estimator.estimate().bandwidth_bps / after_bps - 1) > 0.1:
        _request(estimator, clock, 32_000, after_bps)
    assert clock.now - step <= 1.2


def test_the_rtt_moves_up_when_the_path_gets_longer_and_down_at_once() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock, rtt_window_s=10.0)
    # The first probe met a stall: 900 ms. A small request that came back in 45 ms corrects it.
    estimator.observe_rtt(0.900)
    estimator.observe_transfer(500, 0.045 + SERVER_S, SERVER_S)
    assert estimator.estimate().rtt_ms == pytest.approx(45.0)
    for _ in range(20):
        clock.now += 0.5
        estimator.observe_rtt(RTT_S)
        _request(estimator, clock, 32_000, 2e6)
    assert estimator.estimate().rtt_ms == pytest.approx(40.0)
    # The route changes: every round trip takes 100 ms now, probes and requests alike. The
    # shorter ones age out of the window, and then the estimate follows.
    change = clock.now
    while clock.now - change < 12.0:
        clock.now += 0.5
        estimator.observe_rtt(0.100)
        _request(estimator, clock, 32_000, 2e6, rtt_s=0.100)
        if clock.now - change < 9.0:
            assert estimator.estimate().rtt_ms == pytest.approx(40.0)
    assert estimator.estimate().rtt_ms == pytest.approx(100.0, abs=1.0)
    # Without probes too: a request's round trip is its network time less its transfer at the
    # fastest rate the link has delivered.
    requests_only = LinkEstimator(clock=clock, rtt_window_s=10.0)
    requests_only.observe_rtt(RTT_S)
    for _ in range(10):
        _request(requests_only, clock, 32_000, 2e6)
    change = clock.now
    while clock.now - change < 12.0:
        _request(requests_only, clock, 32_000, 2e6, rtt_s=0.100)
    assert requests_only.estimate().rtt_ms == pytest.approx(100.0, abs=1.0)


def test_requests_never_pull_the_rtt_below_the_path_when_the_link_gets_faster() -> None:
    clock = Clock()
    estimator = _estimator(clock, rtt_window_s=3.0)
    for _ in range(10):
        _request(estimator, clock, 100_000, 1e6)
    # Ten times faster than ever seen, and no probe for longer than the RTT window.
    for _ in range(40):
        _request(estimator, clock, 100_000, 10e6)
    assert estimator.estimate().rtt_ms >= RTT_S * 1e3 - 0.5
    assert estimator.estimate().bandwidth_bps == pytest.approx(10e6, rel=0.02)


def test_a_transfer_below_resolution_never_bounds_above_what_the_link_delivered() -> None:
    clock = Clock()
    estimator = _estimator(clock)
    # Before any timed transfer a small one says nothing about the rate (the old bound said
    # 10 kB / 3 ms = 27 Mbit/s, on a link that may be at 1).
    clock.now += 0.1
    estimator.observe_transfer(10_000, RTT_S + 0.001 + SERVER_S, SERVER_S)
    assert estimator.estimate().bandwidth_bps is None
    _request(estimator, clock, 58_000, 1e6)
    for _ in range(10):
        clock.now += 0.1
        estimator.observe_transfer(10_000, RTT_S + 0.0005 + SERVER_S, SERVER_S)
        assert estimator.estimate().bandwidth_bps <= estimator.max_delivered_bps == pytest.approx(1e6)


def test_the_near_future_is_spread_on_a_link_that_stalls_and_narrow_on_a_steady_one() -> None:
    clock = Clock()
    steady = _estimator(clock)
    for _ in range(20):
        _request(steady, clock, 32_000, 3e6)
    estimate = steady.estimate()
    assert len(estimate.near_future_bps) == 5
    assert all(rate == pytest.approx(3e6, rel=0.01) for rate in estimate.near_future_bps)
    stalling = _estimator(clock)
    for i in range(40):
        _request(stalling, clock, 32_000, 3e6, stall_s=0.8 if i % 4 == 3 else 0.0)
    estimate = stalling.estimate()
    assert min(estimate.near_future_bps) < 0.5 * estimate.bandwidth_bps
    assert sorted(estimate.near_future_bps) == list(estimate.near_future_bps)


def test_bad_estimator_settings_are_named() -> None:
    with pytest.raises(SplitInferError, match="estimator horizon_s 0"):
        LinkEstimator(horizon_s=0)
    with pytest.raises(SplitInferError, match="estimator rtt_window_s inf"):
        LinkEstimator(rtt_window_s=float("inf"))


def test_through_a_real_link_the_estimate_recovers_after_a_stall(multi_bundle: Path, multi_server: str) -> None:
    # 4 Mbit/s, nothing for 1.5 s, 4 Mbit/s again; 40 ms RTT. Cut `a` in fp32 sends 32 KiB (65 ms).
    trace = RateTrace.from_rates([(0.0, 4e6), (2.5, 0.0), (4.0, 4e6)], period_s=30.0)
    with LinkEmulator(multi_server, Shape(trace=trace, delay_ms=20), Shape(delay_ms=20)) as link:
        with EdgeClient(multi_bundle, link.address) as client:
            client.adaptive.pin("a", "fp32")
            origin = link.trace_origin_s("up")
            assert origin is not None
            took, estimates = [], []
            while time.monotonic() - origin < 6.5:
                result = client.infer(multi_input(0))
                took.append(result.timing.total_ms)
                estimate = client.adaptive.estimator.estimate()
                estimates.append((time.monotonic() - origin, estimate.bandwidth_bps, estimate.rtt_ms))
    assert max(took) > 500, took  # a request met the stall
    # Within 1.5 s of the link coming back, and from then on, the estimate is the link's rate;
    # the RTT (probed even in this closed loop) is the path's.
    after = [(bw, rtt) for t, bw, rtt in estimates if t > 5.5]
    assert after, estimates
    for bandwidth, rtt in after:
        assert bandwidth == pytest.approx(4e6, rel=0.25), estimates
        assert 40 <= rtt <= 55, estimates
