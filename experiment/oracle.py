"""What each request could have taken: the per-request oracle, the all-cuts bound, and the best
static cut.

The oracle knows the link a request met. For each cut (and codec) of the profile (a
protos.decisions Choice) it predicts the request with the CostModel's formula, except that the
transfer is not bytes / a mean rate but the time the link really needed for those bytes from the
moment the device had them ready: the trace's delivery opportunities from t + head + encode on (a fixed rate's bytes / rate otherwise).
The oracle's latency is the smallest of these, its cut the one that gives it. Two ranges are
recorded (`Oracles`), under two names:
- **the oracle**: over the (cut, codec) choices the adaptive bundle carries. No runtime with that
  bundle can do better without knowing the future link; the adaptive runtime is judged by how close
  it comes.
- **the bound**: over every cut of the profile (and codec). Out of reach of any one bundle; it says
  what carrying more cuts could still gain.

The best static cut is the one whose predicted mean over a closed loop of requests on the same
link (each request starting when the previous ended, as the runner sends them) is lowest: the cut
a clairvoyant planner would have fixed for the whole run.

A raced request (EdgeClient race_local) also runs the rest of the model on the device from the
moment the head is done, so it takes min(its split latency, the whole model on the device): the
device's head and rest together are the all-on-device time (`whole_model_ms`; monotone times make
it exact). `best_static(..., race_ms=...)` is the cut best at racing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from netemu.traces import RateTrace
from protos.decisions import Choice, latency_ms
from protos.errors import SplitInferError
from splitter.cost.cut_cost import device_encode_ms, monotone_times


@dataclass(frozen=True)
class Link:
    """A fixed rate or a trace (trace time 0 = the cell's link start), and the RTT."""

    rtt_ms: float
    rate_bps: float | None = None
    trace: RateTrace | None = None

    def transfer_ms(self, nbytes: int, start_s: float) -> float:
        if nbytes <= 0:
            return 0.0
        if self.trace is None:
            return nbytes * 8e3 / (self.rate_bps or math.inf)
        packets = math.ceil(nbytes / self.trace.packet_bytes)
        return (self.trace.next_opportunity_s(start_s, packets) - start_s) * 1e3


def options(profile, codecs: Sequence[str], *, allow_raw_input: bool) -> list[Choice]:
    """Every cut × codec of `profile` a plan may choose (the raw input only when allowed), with
    the device's times scaled to the target device."""
    found = []
    times = monotone_times(profile)
    for cut in profile.cuts:
        head_ms, tail_ms = times[cut.name]
        head_ms *= profile.edge_slowdown
        if cut.is_edge_only:
            found.append(Choice(cut.name, "-", head_ms, 0.0, 0, 0.0, 0.0, edge_only=True, head_size=cut.head_size))
            continue
        if not allow_raw_input and any(name in profile.input_shapes for name in cut.tensors):
            continue
        for codec in codecs:
            measured = cut.codecs.get(codec)
            if measured is None:
                continue
            encode_ms = device_encode_ms(profile, codec, measured.encode_ms)
            found.append(
                Choice(
                    cut.name,
                    codec,
                    head_ms,
                    encode_ms,
                    measured.nbytes,
                    measured.decode_ms,
                    tail_ms,
                    head_size=cut.head_size,
                )
            )
    return found


def predicted_ms(option: Choice, link: Link, t_s: float, race_ms: float | None = None) -> float:
    """`option`'s latency for a request that starts at link time `t_s`; raced against the whole
    model on the device when `race_ms` (its time there) is given."""
    if option.edge_only:
        return option.device_ms
    sent_ms = link.transfer_ms(option.nbytes, t_s + option.device_ms / 1e3)
    split_ms = latency_ms(
        device_ms=option.device_ms, transfer_ms=sent_ms, rtt_ms=link.rtt_ms, server_ms=option.server_ms
    )
    return split_ms if race_ms is None else min(split_ms, race_ms)


def whole_model_ms(choices: Sequence[Choice]) -> float:
    """The whole model on the device: what the device's side of a race takes."""
    found = [o.device_ms for o in choices if o.edge_only]
    if not found:
        raise SplitInferError("the options lack the all-on-device cut: a race's local time is unknown")
    return found[0]


def oracle(choices: Sequence[Choice], link: Link, t_s: float) -> tuple[Choice, float]:
    """The best option for a request starting at `t_s`, and its latency."""
    best = min(choices, key=lambda o: predicted_ms(o, link, t_s))
    return best, predicted_ms(best, link, t_s)


@dataclass(frozen=True)
class Oracles:
    """The choices the oracle ranges over (the adaptive bundle's) and those the bound does (all)."""

    carried: Sequence[Choice]
    every: Sequence[Choice]

    def at(self, link: Link, t_s: float) -> tuple[tuple[Choice, float], tuple[Choice, float]]:
        """(the oracle's choice and latency, the bound's) for a request starting at `t_s`."""
        return oracle(self.carried, link, t_s), oracle(self.every, link, t_s)


def best_static(
    choices: Sequence[Choice], link: Link, duration_s: float, *, race_ms: float | None = None
) -> tuple[Choice, float]:
    """The option with the lowest predicted mean latency over a closed loop lasting `duration_s`;
    with `race_ms` (the whole model on the device), of the options that send, raced."""
    if race_ms is not None:
        choices = [o for o in choices if not o.edge_only]

    def mean_ms(option: Choice) -> float:
        t, totals = 0.0, []
        while t < duration_s or not totals:
            total = predicted_ms(option, link, t, race_ms)
            totals.append(total)
            t += total / 1e3
        return sum(totals) / len(totals)

    scored = [(mean_ms(o), o) for o in choices]
    value, option = min(scored, key=lambda pair: pair[0])
    return option, value
