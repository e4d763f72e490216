"""Latency over a distribution of rates, and whether an exploration is worth sending.

A decision is made before the request meets the link, so it is priced over the rates it may
meet (LinkEstimate.near_future_bps, equally likely): the expected latency of a (cut, codec) is the
mean of its predicted latency at each (protos.decisions.Choice.predicted_ms), which charges a
link that stalls now and then for its stalls, where the latency at a point estimate does not.

While the device runs everything itself, nothing measures the link. One request sent split (an
exploration) costs its expected latency less the device's own, and is worth what it may reveal:
were the link at a rate the estimator has seen it at lately (LinkEstimate.history_bps), the
device would offload and save, at that rate, the device's latency less the best split's, on
each request until the next chance to look (`explore_s` worth of the device's requests). The
exploration is sent when that expected saving is at least its expected cost. A link that has only
ever been too slow to offload is then no longer probed every few seconds; one that was fast
lately is, however slow the last measurement said it was. An exploration that takes `k` × its
typical latency (at the median rate the link has shown lately: it asks whether the link is back
there) is abandoned for the device's own run
(edge_runtime.client), so a stall costs it at most that and the rest of the model here: the
cost is priced with that bound, or a link that stalled lately would never be looked at again.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos.decisions import IDLE_SERVER, Choice, ServerLoad


def expected_ms(choice: Choice, rates_bps: Sequence[float], rtt_ms: float, load: ServerLoad = IDLE_SERVER) -> float:
    """The mean predicted latency of `choice` over equally likely `rates_bps`."""
    return sum(choice.predicted_ms(rate, rtt_ms, load=load) for rate in rates_bps) / len(rates_bps)


def exploration_worth(
    choices: Sequence[Choice],
    local: Choice,
    probe: Choice,
    near_future_bps: Sequence[float],
    history_bps: Sequence[float],
    rtt_ms: float,
    *,
    explore_s: float,
    abandon_ms: float | None = None,
    load: ServerLoad = IDLE_SERVER,
) -> tuple[float, float]:
    """(expected cost, expected value) in ms of sending `probe` split instead of running `local`
    (the device alone): the cost over the near future, the value over where the link has been.
    `abandon_ms`: the probe is abandoned then and the device runs the rest of the model (its
    time less the probe's head), which bounds what a stall can cost."""
    latencies = [probe.predicted_ms(rate, rtt_ms, load=load) for rate in near_future_bps]
    if abandon_ms is not None:
        worst_ms = abandon_ms + max(0.0, local.head_ms - probe.head_ms)
        latencies = [min(latency, worst_ms) for latency in latencies]
    cost_ms = max(0.0, sum(latencies) / len(latencies) - local.head_ms)
    splits = [c for c in choices if not c.edge_only]
    saving_ms = 0.0
    for rate in history_bps:
        best_ms = min(c.predicted_ms(rate, rtt_ms, load=load) for c in splits)
        saving_ms += max(0.0, local.head_ms - best_ms) / len(history_bps)
    # The device's requests until the next exploration may look again.
    requests = max(1.0, explore_s * 1e3 / max(local.head_ms, 1e-3))
    return cost_ms, saving_ms * requests
