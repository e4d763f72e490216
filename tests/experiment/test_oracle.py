"""The per-request oracle and the best static cut, on links whose answers are known."""

from __future__ import annotations

import pytest

from experiment.oracle import Link, best_static, oracle, predicted_ms
from netemu.traces import RateTrace
from protos.decisions import Choice

# Early cut: little device time, many bytes; late cut: the reverse; all on the device: 300 ms.
EARLY = Choice(
    "early", "int8+zstd", head_ms=20.0, encode_ms=0.0, nbytes=60_000, decode_ms=0.0, tail_ms=10.0, head_size=5
)
LATE = Choice(
    "late", "int8+zstd", head_ms=100.0, encode_ms=0.0, nbytes=15_000, decode_ms=0.0, tail_ms=5.0, head_size=40
)
EDGE = Choice("output", "-", 300.0, 0.0, 0, 0.0, 0.0, edge_only=True, head_size=100)
CHOICES = [EARLY, LATE, EDGE]


def test_a_fixed_rate_is_bytes_over_rate_plus_the_round_trip() -> None:
    link = Link(rtt_ms=40.0, rate_bps=12e6)
    assert predicted_ms(EARLY, link, 0.0) == pytest.approx(20 + 40 + 40 + 10)
    assert predicted_ms(EDGE, link, 0.0) == 300.0
    assert oracle(CHOICES, link, 0.0)[0] == EARLY
    assert oracle(CHOICES, Link(40.0, 1e6), 0.0)[0] == LATE
    assert oracle(CHOICES, Link(40.0, 0.2e6), 0.0)[0] == EDGE


def test_on_a_trace_the_oracle_knows_the_rate_the_request_meets() -> None:
    # 12 Mbit/s for 5 s, then 0.2 Mbit/s for 5 s.
    trace = RateTrace.from_rates([(0.0, 12e6), (5.0, 0.2e6)], period_s=10.0)
    link = Link(rtt_ms=40.0, trace=trace)
    assert oracle(CHOICES, link, 1.0)[0] == EARLY
    assert oracle(CHOICES, link, 6.0)[0] == EDGE
    # The transfer starts when the device is done: 60 kB from t = 4.98 s crosses into the slow part.
    assert predicted_ms(EARLY, link, 4.96) > predicted_ms(EARLY, link, 1.0) + 100


def test_the_best_static_cut_is_the_best_mean_over_the_whole_link() -> None:
    trace = RateTrace.from_rates([(0.0, 12e6), (5.0, 0.2e6)], period_s=10.0)
    link = Link(rtt_ms=40.0, trace=trace)
    best, mean_ms = best_static(CHOICES, link, 10.0)
    alone = {o.cut: best_static([o], link, 10.0)[1] for o in CHOICES}
    assert alone["output"] == pytest.approx(300.0)
    assert best.cut == min(alone, key=alone.get) and mean_ms == alone[best.cut]
    # A closed loop sends more requests while the link is fast: each counts, so the early cut,
    # fast there and slow only for the few requests of the slow half, has the lowest mean.
    assert best == EARLY


def test_a_raced_request_takes_the_better_of_its_split_and_the_whole_model_here() -> None:
    from experiment.oracle import whole_model_ms

    race_ms = whole_model_ms(CHOICES)
    assert race_ms == 300.0
    fast, slow = Link(40.0, 12e6), Link(40.0, 0.1e6)
    assert predicted_ms(EARLY, fast, 0.0, race_ms) == predicted_ms(EARLY, fast, 0.0)
    # 60 kB at 0.1 Mbit/s take 4.8 s: the device's own run answers at 300 ms.
    assert predicted_ms(EARLY, slow, 0.0, race_ms) == 300.0
    trace = RateTrace.from_rates([(0.0, 12e6), (5.0, 0.1e6)], period_s=10.0)
    link = Link(rtt_ms=40.0, trace=trace)
    raced, raced_mean = best_static(CHOICES, link, 10.0, race_ms=race_ms)
    plain_mean = best_static(CHOICES, link, 10.0)[1]
    # Racing never sends nothing, and the race's floor makes the slow half cost 300 ms at most.
    assert not raced.edge_only and raced_mean < plain_mean
