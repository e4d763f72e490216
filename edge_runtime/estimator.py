"""The device's view of its uplink, from its own requests: bandwidth and round-trip time.

Every split request is a measurement. Its RPC took `rpc_s` of which the server accounts for
`server_s` (ServerTiming.total_ms); the rest is the round trip plus the time the request's bytes
took to cross the uplink. So, with the current RTT estimate,

    transfer_s = rpc_s − server_s − rtt_s        bandwidth sample = request bits / transfer_s

The bandwidth estimate is the harmonic mean of the last `window` samples, as video players
estimate throughput (FESTIVE, MPC): one fast outlier cannot inflate it, a slow one pulls it down
at once, which is the safe side for latency. Samples older than `max_age_s` are dropped, so after
a quiet spell the estimate is built from fresh transfers only.

A request too small for its transfer to stand out from the RTT's jitter (transfer below
`resolution_s`) says only that the link is at least bits / resolution_s fast. Such a lower bound
is kept apart: when it is newer than every timed transfer and exceeds the estimate, it raises the
estimate (the link is demonstrably faster now); otherwise it is ignored, so small requests neither
invent a slow link nor a fast one, and a timed slow transfer overrules an older bound at once.

A raced request the device answered first (EdgeClient's `race_local`) was cancelled before its
reply came: its bytes had not crossed within `elapsed_s` − RTT − the server's expected time, so
the link is at most that fast. Such a ceiling lowers a higher estimate when it is newer than every
timed transfer, as a lower bound raises a lower one; bounds and ceilings apply in time order.

RTT: the minimum over the last `rtt_window` probes (a tiny call when the device is idle, see
edge_runtime.adaptive) and of request round trips with their transfer taken out. A minimum
because queueing only ever adds delay; a window so that a route that got longer is learnt.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from protos.errors import SplitInferError


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float | None  # None until a request has measured it
    rtt_ms: float | None  # None until a probe or a request has measured it
    samples: int  # bandwidth samples behind the estimate
    age_s: float  # since the newest of them (inf when none)


class LinkEstimator:
    """Thread-safe; `clock` is injectable so that tests can replay time."""

    def __init__(
        self,
        *,
        window: int = 5,
        max_age_s: float = 10.0,
        rtt_window: int = 20,
        resolution_s: float = 0.003,
        clock=time.monotonic,
    ) -> None:
        for name, value in (("window", window), ("rtt_window", rtt_window)):
            if not (isinstance(value, int) and value >= 1):
                raise SplitInferError(f"estimator {name} {value!r} is not an integer ≥ 1")
        for name, value in (("max_age_s", max_age_s), ("resolution_s", resolution_s)):
            if not (math.isfinite(value) and value > 0):
                raise SplitInferError(f"estimator {name} {value!r} is not a finite number > 0")
        self.max_age_s = max_age_s
        self.resolution_s = resolution_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rates: deque[tuple[float, float]] = deque(maxlen=window)  # (when, bit/s)
        self._bounds: deque[tuple[float, float]] = deque(maxlen=window)  # (when, at least bit/s)
        self._ceilings: deque[tuple[float, float]] = deque(maxlen=window)  # (when, at most bit/s)
        self._rtts: deque[float] = deque(maxlen=rtt_window)  # seconds

    def observe_rtt(self, rtt_s: float) -> None:
        """A round trip that carried (almost) no payload: a probe."""
        if math.isfinite(rtt_s) and rtt_s >= 0:
            with self._lock:
                self._rtts.append(rtt_s)

    def observe_transfer(self, payload_bytes: int, rpc_s: float, server_s: float) -> None:
        """One request's bytes, its RPC wall time and the server's own share of it."""
        if payload_bytes <= 0 or not (math.isfinite(rpc_s) and math.isfinite(server_s)):
            return
        network_s = max(0.0, rpc_s - server_s)
        now = self._clock()
        with self._lock:
            rtt_s = min(self._rtts) if self._rtts else None
            bits = payload_bytes * 8.0
            if rtt_s is None:
                # No probe yet: the whole network time is an upper bound of the RTT.
                self._rtts.append(network_s)
                return
            transfer_s = network_s - rtt_s
            if transfer_s < self.resolution_s:
                self._bounds.append((now, bits / self.resolution_s))
                if transfer_s < 0:
                    # Faster than the RTT believed: the RTT was overestimated.
                    self._rtts.append(network_s)
                return
            self._rates.append((now, bits / transfer_s))

    def observe_unfinished(self, payload_bytes: int, elapsed_s: float, server_s: float) -> None:
        """A request whose reply had not come `elapsed_s` after it was sent, when the server's
        share would have been about `server_s`: a ceiling on the bandwidth (nothing when the RTT
        is not known yet or the time left no room for the transfer)."""
        if payload_bytes <= 0 or not (math.isfinite(elapsed_s) and math.isfinite(server_s)):
            return
        now = self._clock()
        with self._lock:
            if not self._rtts:
                return
            transfer_s = elapsed_s - server_s - min(self._rtts)
            if transfer_s >= self.resolution_s:
                self._ceilings.append((now, payload_bytes * 8.0 / transfer_s))

    def estimate(self) -> LinkEstimate:
        now = self._clock()
        with self._lock:
            rates = [r for t, r in self._rates if now - t <= self.max_age_s]
            timed = max((t for t, _ in self._rates), default=-math.inf)
            # Bounds (at least, +1) and ceilings (at most, −1) newer than every timed transfer.
            limits = sorted(
                (t, side, b)
                for side, found in ((1, self._bounds), (-1, self._ceilings))
                for t, b in found
                if now - t <= self.max_age_s and t > timed
            )
            rtt_s = min(self._rtts) if self._rtts else None
            newest = max(
                (t for t, _ in (*self._rates, *self._bounds, *self._ceilings) if now - t <= self.max_age_s),
                default=None,
            )
        bandwidth = len(rates) / sum(1.0 / r for r in rates) if rates else None
        for _, side, limit in limits:
            if bandwidth is None or (limit - bandwidth) * side > 0:
                bandwidth = limit
        return LinkEstimate(
            bandwidth_bps=bandwidth,
            rtt_ms=rtt_s * 1e3 if rtt_s is not None else None,
            samples=len(rates) + len(limits),
            age_s=now - newest if newest is not None else math.inf,
        )
