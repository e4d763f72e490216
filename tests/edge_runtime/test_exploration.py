"""Decisions under uncertainty (edge_runtime.exploration, edge_runtime.adaptive): the expected
latency over the near future's rates, a chosen quantile, priced explorations; and for real, an
exploration abandoned for the device's own run (netemu's user-space link on loopback)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from multicut import multi_input, multi_reference

from edge_runtime.adaptive import AdaptiveController, AdaptiveSettings, CutChooser
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.exploration import expected_ms, exploration_worth
from netemu import LinkEmulator, Shape
from protos.decisions import Choice, DecisionTable

# A shallow cut that sends 40 kB after 5 ms, a deep one that sends 2 kB after 60 ms, the device alone in 150 ms.
SHALLOW = Choice("shallow", "int8", head_ms=5.0, encode_ms=0.0, nbytes=40_000, decode_ms=0.0, tail_ms=0.0)
DEEP = Choice("deep", "int8", head_ms=60.0, encode_ms=0.0, nbytes=2_000, decode_ms=0.0, tail_ms=0.0)
DEVICE = Choice("all", "-", head_ms=150.0, encode_ms=0.0, nbytes=0, decode_ms=0.0, tail_ms=0.0, edge_only=True)
TABLE = DecisionTable((SHALLOW, DEEP, DEVICE), planning_rtt_ms=40.0)
RTT_MS = 40.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_link_that_stalls_one_time_in_five_is_priced_for_its_stalls() -> None:
    point = (8e6,)
    stalling = (8e6, 8e6, 8e6, 8e6, 0.2e6)
    # At the point estimate the shallow cut wins (45 + RTT against 62 + RTT) ...
    assert CutChooser(TABLE).choose(point, RTT_MS)[0] == SHALLOW
    # ... but its 40 kB take 1.6 s in a stall, the deep cut's 2 kB 80 ms: the deep one is expected
    # three times faster (the mean of 4 × 85 ms and 1645 ms against 4 × 102 ms and 180 ms).
    assert expected_ms(SHALLOW, stalling, RTT_MS) == pytest.approx((4 * 85 + 1645) / 5)
    assert expected_ms(DEEP, stalling, RTT_MS) == pytest.approx((4 * 102 + 180) / 5)
    assert CutChooser(TABLE).choose(stalling, RTT_MS)[0] == DEEP


def _controller(clock: Clock, **settings) -> AdaptiveController:
    options = dict(margin=0.0, confirm=1, idle_probe_s=0, explore_s=1.0) | settings
    return AdaptiveController(
        TABLE, AdaptiveSettings(**options), initial_bandwidth_bps=8e6, initial_rtt_ms=RTT_MS, clock=clock
    )


def _transfers(controller: AdaptiveController, clock: Clock, rates_bps: list[float]) -> None:
    controller.estimator.observe_rtt(RTT_MS / 1e3)
    for rate in rates_bps:
        clock.now += 0.1
        rpc_s = 32_000 * 8 / rate + RTT_MS / 1e3
        clock.now += rpc_s
        controller.observe(32_000, rpc_s, 0.0)


def test_a_quantile_plans_for_a_slower_link_than_the_expectation() -> None:
    rates = [8e6, 8e6, 8e6, 8e6, 2e6] * 6
    clock = Clock()
    expected = _controller(clock)
    _transfers(expected, clock, rates)
    pessimist = _controller(clock, quantile=0.1)
    _transfers(pessimist, clock, rates)
    spread = expected.estimator.estimate().near_future_bps
    assert len(spread) == 5 and min(spread) < 0.6 * max(spread)
    # The 10 % quantile of the spread is below the expectation's every point but the lowest.
    assert pessimist.decide().predicted_ms > expected.decide().predicted_ms


def test_explorations_are_sent_when_the_link_was_fast_lately_and_not_when_it_never_was() -> None:
    clock = Clock()
    # The link was fast, then one transfer crawled: the device runs everything, and explores
    # once every explore_s (what it may find, at the rates seen lately, is worth the cost).
    lately_fast = _controller(clock)
    _transfers(lately_fast, clock, [8e6] * 10 + [0.05e6])
    decisions = []
    for _ in range(30):
        clock.now += 0.1
        decisions.append(lately_fast.decide())
    explored = [d for d in decisions if d.exploring]
    assert all(d.choice == DEVICE for d in decisions if not d.exploring)
    # One at once (the last split was long ago), then one a second.
    assert decisions[0].exploring and 3 <= len(explored) <= 4
    assert all(not d.choice.edge_only for d in explored)
    # Each asks whether the link is back at its usual 8 Mbit/s: abandoned at a few times what that takes.
    assert all(d.typical_ms == pytest.approx(d.choice.predicted_ms(8e6, RTT_MS)) for d in explored)
    assert all(d.predicted_ms > 2 * d.typical_ms for d in explored)
    # A link only ever slower than offloading pays for: nothing to find, nothing sent.
    never_fast = _controller(clock)
    _transfers(never_fast, clock, [0.05e6] * 10)
    decisions = []
    for _ in range(30):
        clock.now += 0.1
        decisions.append(never_fast.decide())
    assert all(d.choice == DEVICE and not d.exploring for d in decisions)
    cost_ms, value_ms = exploration_worth(TABLE.choices, DEVICE, DEEP, (0.05e6,), (0.05e6,) * 5, RTT_MS, explore_s=1.0)
    assert value_ms == 0 and cost_ms > 0


def test_abandoning_bounds_what_a_stall_costs_an_exploration() -> None:
    # The link stalled one request in five lately, and was fast otherwise (and before).
    near_future = (8e6, 8e6, 8e6, 8e6, 1e3)
    history = (8e6,) * 5
    unbounded, value_ms = exploration_worth(TABLE.choices, DEVICE, DEEP, near_future, history, RTT_MS, explore_s=3.0)
    # Without abandoning, a fifth of a 16 s stall outweighs the 65 ms it may save on each of 20 requests...
    assert unbounded > value_ms
    # ... abandoned at 3 x its typical 102 ms, the stall costs at most 306 ms and the rest of the model here.
    bounded, _ = exploration_worth(
        TABLE.choices, DEVICE, DEEP, near_future, history, RTT_MS, explore_s=3.0, abandon_ms=3 * 102.0
    )
    assert bounded == pytest.approx((4 * 102 + 306 + 90) / 5 - 150)
    assert bounded < value_ms


def test_an_exploration_that_stalls_is_abandoned_for_the_device(multi_bundle: Path, multi_server: str) -> None:
    # 500 bit/s: the exploration's few hundred bytes take seconds. The table's best offloading
    # entry at the initial 1 kbit/s is `pooled` (32 bytes), typically ~0.3 s: abandoned at 2 x that.
    settings = AdaptiveSettings(idle_probe_s=0, explore_s=0.2, abandon_factor=2.0)
    edge_config = EdgeConfig(adaptive=settings, initial_bandwidth_bps=1e3, initial_rtt_ms=10)
    with LinkEmulator(multi_server, Shape(rate_bps=500, delay_ms=5), Shape(delay_ms=5)) as link:
        with EdgeClient(multi_bundle, link.address, edge_config) as client:
            client.adaptive.estimator.observe_rtt(0.010)
            time.sleep(0.25)
            started = time.perf_counter()
            result = client.infer(multi_input(4))
            took_s = time.perf_counter() - started
            estimate = client.adaptive.estimator.estimate()
    assert result.decision is not None and result.decision.exploring
    assert result.cut == "pooled" and result.fallback and "abandoned" in result.fallback_reason
    assert took_s < 2 * result.decision.typical_ms / 1e3 + 0.5
    np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(4)), rtol=0, atol=1e-6)
    # Its bytes had not crossed: the link is at most their bits over the time they had.
    assert estimate.bandwidth_bps is not None and estimate.bandwidth_bps < 20e3


def test_without_abandoning_an_exploration_waits_for_its_reply(multi_bundle: Path, multi_server: str) -> None:
    settings = AdaptiveSettings(idle_probe_s=0, explore_s=0.2, abandon_factor=0.0)
    edge_config = EdgeConfig(adaptive=settings, initial_bandwidth_bps=1e3, initial_rtt_ms=10)
    with LinkEmulator(multi_server, Shape(rate_bps=20e3, delay_ms=5), Shape(delay_ms=5)) as link:
        with EdgeClient(multi_bundle, link.address, edge_config) as client:
            time.sleep(0.25)
            result = client.infer(multi_input(4))
    assert result.decision is not None and result.decision.exploring
    assert result.winner == "" and not result.fallback and result.response_bytes > 0
