"""The uplink's rate from delivery samples: bytes delivered over the interval they took to cross.

In the spirit of BBR's delivery-rate estimator (draft-cheng-iccrg-delivery-rate-estimation), each
sample is the bytes a request delivered over the interval they took (edge_runtime.estimator
derives the interval from the request's wall time). The estimate is the mean of the log-rates
of the samples within the last `horizon_s` before the newest one, each weighted by the share of
its interval inside that horizon: a geometric mean, because a cellular link's per-request rates
are skewed both ways (a small request that meets a burst reads many times the link's rate, one
that meets a gap a fraction of it) and a ×3 and a ÷3 should weigh alike. Weighting by time
instead (bits over seconds) lets the slow ones dominate, as they last longest, and reads a
bursty link below what it offered (bench/estimator.py, 20 s of AT&T LTE, three seeds: 39/15/41 %
median error where this reads 24/18/22 %); an arithmetic mean lets the fast ones dominate.

So a request that met a multi-second stall weighs only as much of it as the horizon reaches
back over, and the first requests that cross at the link's rate again outweigh it, within a
horizon (not after the last `window` requests, as a harmonic mean of them would); a lone
request long after the others (an exploration, after a stretch on the device) is the estimate by
itself. Samples older than `max_age_s` are forgotten.

Bounds: a request too small to time says the link is at least some rate fast, a raced request the
device answered first that it is at most some rate fast (its bytes had not crossed by then).
Either moves the estimate only when it is newer than every timed sample, in time order. A lower
bound is never taken above the fastest rate any timed sample has shown (`max_delivered_bps`):
what the link never did, a small request cannot prove.

The distribution of the near future: every timed sample is also a forecast check, its rate over
the estimate just before it came. The quantiles of those ratios over the last `forecast_window`
samples, times the current estimate, are the rates the next request may meet
(`near_future_bps`): a link that stalls now and then shows ratios far below 1, a steady one
ratios near 1. edge_runtime.adaptive decides over them. The quantiles of the remembered samples'
own rates (`history_bps`) say where the link has been, whatever the estimate now: what an
exploration may find (edge_runtime.exploration).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

# The quantiles the near-future distribution is summarised by, each standing for a fifth of it.
FORECAST_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
# Forecast checks needed before the spread is believed; until then the estimate alone.
MIN_FORECASTS = 5


@dataclass(frozen=True)
class Delivery:
    end_s: float  # when the bytes had crossed (the estimator's clock)
    bits: float
    interval_s: float

    @property
    def rate_bps(self) -> float:
        return self.bits / self.interval_s

    def share_in(self, start: float, end: float) -> float:
        """The fraction of this delivery's interval within [start, end]."""
        inside = min(self.end_s, end) - max(self.end_s - self.interval_s, start)
        return max(0.0, inside) / self.interval_s


class DeliveryRate:
    """Not thread-safe: edge_runtime.estimator.LinkEstimator holds the lock."""

    def __init__(self, *, horizon_s: float, max_age_s: float, forecast_window: int = 40, memory: int = 64) -> None:
        self.horizon_s = horizon_s
        self.max_age_s = max_age_s
        self._samples: deque[Delivery] = deque(maxlen=memory)
        # (when, +1 at least / −1 at most, bit/s)
        self._limits: deque[tuple[float, int, float]] = deque(maxlen=memory)
        self._ratios: deque[float] = deque(maxlen=forecast_window)
        self.max_delivered_bps = 0.0

    def add(self, now: float, bits: float, interval_s: float) -> None:
        before = self.rate_bps(now)
        sample = Delivery(now, bits, interval_s)
        if before:
            self._ratios.append(sample.rate_bps / before)
        self._samples.append(sample)
        self.max_delivered_bps = max(self.max_delivered_bps, sample.rate_bps)

    def add_lower_bound(self, now: float, bps: float) -> None:
        """At least `bps`, as far as the link has ever shown it can go (nothing before a timed sample)."""
        if self.max_delivered_bps > 0:
            self._limits.append((now, 1, min(bps, self.max_delivered_bps)))

    def add_ceiling(self, now: float, bps: float) -> None:
        self._limits.append((now, -1, bps))

    def newest_s(self, now: float) -> float | None:
        """When the newest fresh sample or bound came (None: none younger than max_age_s)."""
        times = [s.end_s for s in self._samples] + [t for t, _, _ in self._limits]
        fresh = [t for t in times if now - t <= self.max_age_s]
        return max(fresh) if fresh else None

    def count(self, now: float) -> int:
        return sum(1 for s in self._samples if now - s.end_s <= self.max_age_s) + len(self._fresh_limits(now))

    def rate_bps(self, now: float) -> float | None:
        """The rate over the horizon before the newest sample, then the bounds newer than it."""
        fresh = [s for s in self._samples if now - s.end_s <= self.max_age_s]
        rate = None
        if fresh:
            end = fresh[-1].end_s
            weighted = [(s.share_in(end - self.horizon_s, end), s.rate_bps) for s in fresh]
            total = sum(w for w, _ in weighted)
            rate = math.exp(sum(w * math.log(r) for w, r in weighted if w > 0) / total)
        for _, side, limit in self._fresh_limits(now):
            if rate is None or (limit - rate) * side > 0:
                rate = limit
        return rate

    def near_future_bps(self, now: float) -> tuple[float, ...]:
        """Rates the next request may meet, equally likely (FORECAST_QUANTILES of the forecast
        checks times the estimate); the estimate alone until MIN_FORECASTS checks were made."""
        rate = self.rate_bps(now)
        if rate is None:
            return ()
        if len(self._ratios) < MIN_FORECASTS:
            return (rate,)
        ratios = np.quantile(np.fromiter(self._ratios, dtype=np.float64), FORECAST_QUANTILES)
        return tuple(float(rate * r) for r in ratios)

    def history_bps(self) -> tuple[float, ...]:
        """Where the link has been: FORECAST_QUANTILES of every remembered sample's rate, however
        old (what a link not measured for a while may have gone back to)."""
        if not self._samples:
            return ()
        rates = np.fromiter((s.rate_bps for s in self._samples), dtype=np.float64)
        return tuple(float(r) for r in np.quantile(rates, FORECAST_QUANTILES))

    def _fresh_limits(self, now: float) -> list[tuple[float, int, float]]:
        timed = self._samples[-1].end_s if self._samples else -math.inf
        return sorted(lim for lim in self._limits if now - lim[0] <= self.max_age_s and lim[0] > timed)
