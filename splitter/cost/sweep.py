"""Switching points: the bandwidths at which a policy's chosen cut changes, for a fixed RTT.

A runtime that re-plans when the measured bandwidth moves needs only these thresholds, not the
profile. The sweep plans on a log-spaced grid of bandwidths and bisects (in log space) every
interval whose ends chose different cuts, to `rel_tol`. A cut chosen only inside one grid interval
(narrower than a factor of (hi/lo)^(1/steps)) can be missed; the default grid is 2.2% wide.
Bandwidths at which no cut satisfies the constraints (a deadline a slow uplink cannot meet) form
their own segments, named `-`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protos.errors import SplitInferError
from protos.power import PowerModel
from splitter.cost.network import NetworkModel
from splitter.cost.plan import DEFAULT_CODEC, DEFAULT_POLICY, choose, cost_table
from splitter.policies import Constraints
from splitter.profile.schema import Profile

NO_CUT = "-"


@dataclass(frozen=True)
class Segment:
    """From lo_bps to hi_bps the policy chooses `cut` (NO_CUT: nothing satisfies the constraints)."""

    lo_bps: float
    hi_bps: float
    cut: str
    # Predicted latency at the segment's ends (NaN where no cut).
    lo_total_ms: float
    hi_total_ms: float

    def describe(self) -> str:
        span = f"{_rate(self.lo_bps):>12} – {_rate(self.hi_bps):<12}"
        if self.cut == NO_CUT:
            return f"{span} no cut satisfies the constraints"
        return f"{span} {self.cut}  ({self.lo_total_ms:.1f} → {self.hi_total_ms:.1f} ms)"


def _rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.4g} bit/s"


def sweep_bandwidth(
    profile: Profile,
    rtt_ms: float,
    *,
    codec: str = DEFAULT_CODEC,
    policy: str = DEFAULT_POLICY,
    constraints: Constraints = Constraints(),
    power: PowerModel | None = None,
    lo_bps: float = 1e4,
    hi_bps: float = 1e9,
    steps: int = 512,
    rel_tol: float = 1e-3,
) -> list[Segment]:
    """The segments of [lo_bps, hi_bps] over which the chosen cut stays the same, low to high."""
    if not 0 < lo_bps < hi_bps:
        raise SplitInferError(f"sweep range must satisfy 0 < lo < hi, got {lo_bps:g}..{hi_bps:g} bit/s")
    cache: dict[float, tuple[str, float]] = {}

    def chosen(bps: float) -> tuple[str, float]:
        if bps not in cache:
            table = cost_table(profile, NetworkModel(bps, rtt_ms), codec, power)
            try:
                cost = choose(table, policy, constraints)
                cache[bps] = (cost.name, cost.total_ms)
            except SplitInferError as err:
                if "no cut satisfies" not in str(err):
                    raise
                cache[bps] = (NO_CUT, math.nan)
        return cache[bps]

    grid = [lo_bps * (hi_bps / lo_bps) ** (i / (steps - 1)) for i in range(steps)]
    # Each switch as (last bandwidth known to choose the old cut, first known to choose the new).
    switches: list[tuple[float, float]] = []
    for left, right in zip(grid, grid[1:]):
        if chosen(left)[0] == chosen(right)[0]:
            continue
        a, b = left, right
        while b / a > 1 + rel_tol:
            mid = math.sqrt(a * b)
            if chosen(mid)[0] == chosen(left)[0]:
                a = mid
            else:
                b = mid
        switches.append((a, b))
    starts = [lo_bps, *(b for _, b in switches)]
    ends = [*(a for a, _ in switches), hi_bps]
    return [Segment(lo, hi, chosen(lo)[0], chosen(lo)[1], chosen(hi)[1]) for lo, hi in zip(starts, ends)]
