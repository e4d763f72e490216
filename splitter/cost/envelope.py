"""The (cut, codec) choices that are the fastest somewhere in a range of uplink rates, exactly.

At a fixed RTT every choice's predicted latency (protos.decisions.latency_ms) is a line in the
reciprocal of the rate x = 1 / bandwidth:

    latency = (device_ms + rtt_ms + server_ms) + (bytes sent + reply bytes) · 8e3 · x

(all on the device: its head alone, a flat line). The fastest choice at each rate is the lower
envelope of these lines, and the choices on it over [1 / hi, 1 / lo] are the only ones a device
that plans by latency ever needs in that range. The envelope is computed by the convex-hull
construction (lines in falling slope order, each dropping the last while it is below the
crossing of the two before it) rather than by planning on a grid of rates, as
splitter.cost.sweep does: a grid misses a choice that wins only between two of its points, and
the hull has no such gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos.decisions import Choice
from protos.errors import SplitInferError


@dataclass(frozen=True)
class EnvelopeSegment:
    """From lo_bps to hi_bps `choice` is predicted the fastest."""

    lo_bps: float
    hi_bps: float
    choice: Choice


def _line(choice: Choice, rtt_ms: float) -> tuple[float, float]:
    """(latency at infinite rate, ms per unit of 1 / bandwidth) of `choice`."""
    if choice.edge_only:
        return choice.head_ms, 0.0
    return choice.device_ms + rtt_ms + choice.server_ms, (choice.nbytes + choice.result_nbytes) * 8e3


def lower_envelope(choices: Sequence[Choice], rtt_ms: float, lo_bps: float, hi_bps: float) -> list[EnvelopeSegment]:
    """The segments of [lo_bps, hi_bps], low rate to high, each with the choice predicted fastest
    there (of two choices with the same line, the first of `choices`)."""
    if not 0 < lo_bps < hi_bps:
        raise SplitInferError(f"the rate range must satisfy 0 < lo < hi, got {lo_bps:g}..{hi_bps:g} bit/s")
    if not choices:
        raise SplitInferError("no (cut, codec) choice to choose among")
    lines = {}
    for choice in choices:
        intercept, slope = _line(choice, rtt_ms)
        # Of several choices with one slope only the lowest can be on the envelope.
        if slope not in lines or intercept < lines[slope][0]:
            lines[slope] = (intercept, choice)
    # Falling slope: the steepest line (most bytes) is the best as x → 0 (the fastest links) only
    # if it has the smallest intercept; the hull keeps the lines that win somewhere on the x axis.
    ordered = sorted(((slope, intercept, choice) for slope, (intercept, choice) in lines.items()), reverse=True)
    hull: list[tuple[float, float, Choice]] = []
    for line in ordered:
        while len(hull) >= 2 and _crossing(hull[-2], line) <= _crossing(hull[-2], hull[-1]):
            hull.pop()
        hull.append(line)
    # Line k of the hull is the lowest between its crossing with line k-1 and with line k+1.
    x_lo, x_hi = 1.0 / hi_bps, 1.0 / lo_bps
    bounds = [-float("inf"), *(_crossing(a, b) for a, b in zip(hull, hull[1:])), float("inf")]
    segments = []
    for (_, _, choice), start, end in zip(hull, bounds, bounds[1:]):
        if min(end, x_hi) > max(start, x_lo):
            # The range's own ends are kept as given, not as reciprocals of reciprocals.
            lo = lo_bps if end >= x_hi else 1.0 / end
            hi = hi_bps if start <= x_lo else 1.0 / start
            segments.append(EnvelopeSegment(lo, hi, choice))
    return segments[::-1]


def _crossing(a: tuple[float, float, Choice], b: tuple[float, float, Choice]) -> float:
    """The x where line a (steeper) meets line b."""
    return (b[1] - a[1]) / (a[0] - b[0])
