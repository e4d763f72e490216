"""The device's view of its uplink, from its own requests: bandwidth and round-trip time.

Every split request is a measurement. Its RPC took `rpc_s` of which the server accounts for
`server_s` (ServerTiming.total_ms); the rest is the round trip plus the time the request's bytes
took to cross the uplink. gRPC tells nothing finer (the socket under it is not ours, and a relay
or a proxy on the path would hide its counters anyway), so the delivery interval is what is left:

    transfer_s = rpc_s − server_s − rtt_s        a delivery sample: request bits over transfer_s

and the bandwidth is estimated from those samples (edge_runtime.delivery_rate: the rate over the
last `horizon_s` of delivery time, bounds that can never exceed what the link ever delivered, and
the spread of the near future).

A request too small for its transfer to stand out from the RTT's jitter (transfer below
`resolution_s`) says only that the link is at least bits / (transfer + resolution_s) fast, as far
as the fastest timed sample goes. A raced request the device answered first (EdgeClient's
`race_local`), or an exploration abandoned for the device's own run, was cancelled before its
reply came: its bytes had not crossed within `elapsed_s` − RTT − the server's expected time, so
the link is at most that fast.

RTT: the minimum over the last `rtt_window_s` seconds of round trips, which only queueing ever
lengthens, so the least is the path's own. Probes (a tiny call, edge_runtime.probe) give them
directly; every request gives one too, an upper bound: its network time less the least its
transfer can have taken (bits at the fastest rate ever delivered; the whole network time when the
transfer was too short to time). A window in time, not in samples, so that a path that got longer
is learnt once the shorter round trips have aged out, as BBR's min_rtt filter does.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from edge_runtime.delivery_rate import DeliveryRate
from protos.errors import SplitInferError


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float | None  # None until a request has measured it
    rtt_ms: float | None  # None until a probe or a request has measured it
    samples: int  # bandwidth samples and bounds behind the estimate
    age_s: float  # since the newest of them (inf when none)
    # Rates the next request may meet, equally likely (edge_runtime.delivery_rate); () unmeasured.
    near_future_bps: tuple[float, ...] = ()
    # Where the link has been lately, however old the estimate (edge_runtime.delivery_rate).
    history_bps: tuple[float, ...] = ()


class LinkEstimator:
    """Thread-safe; `clock` is injectable so that tests can replay time."""

    def __init__(
        self,
        *,
        horizon_s: float = 1.0,
        max_age_s: float = 10.0,
        rtt_window_s: float = 10.0,
        resolution_s: float = 0.003,
        clock=time.monotonic,
    ) -> None:
        for name, value in (
            ("horizon_s", horizon_s),
            ("max_age_s", max_age_s),
            ("rtt_window_s", rtt_window_s),
            ("resolution_s", resolution_s),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SplitInferError(f"estimator {name} {value!r} is not a finite number > 0")
        self.resolution_s = resolution_s
        self.rtt_window_s = rtt_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = DeliveryRate(horizon_s=horizon_s, max_age_s=max_age_s)
        self._rtts: deque[tuple[float, float]] = deque(maxlen=256)  # (when, seconds)

    @property
    def max_delivered_bps(self) -> float:
        """The fastest rate a timed transfer has shown (0 before one)."""
        return self._rate.max_delivered_bps

    def observe_rtt(self, rtt_s: float) -> None:
        """A round trip that carried (almost) no payload: a probe."""
        if math.isfinite(rtt_s) and rtt_s >= 0:
            with self._lock:
                self._add_rtt(self._clock(), rtt_s)

    def observe_transfer(self, payload_bytes: int, rpc_s: float, server_s: float) -> None:
        """One request's bytes, its RPC wall time and the server's own share of it."""
        if payload_bytes <= 0 or not (math.isfinite(rpc_s) and math.isfinite(server_s)):
            return
        network_s = max(0.0, rpc_s - server_s)
        bits = payload_bytes * 8.0
        now = self._clock()
        with self._lock:
            rtt_s = self._rtt_s(now)
            if rtt_s is None:
                # No probe yet: the whole network time is an upper bound of the RTT.
                self._add_rtt(now, network_s)
                return
            transfer_s = network_s - rtt_s
            if transfer_s >= self.resolution_s:
                self._rate.add(now, bits, transfer_s)
                # At most the network time less the transfer at the fastest rate ever delivered
                # (at least this one's, so never below the current RTT: a request only lowers the
                # RTT when its transfer was too short to time).
                self._add_rtt(now, network_s - bits / self._rate.max_delivered_bps)
            else:
                self._rate.add_lower_bound(now, bits / (max(transfer_s, 0.0) + self.resolution_s))
                self._add_rtt(now, network_s)

    def observe_unfinished(self, payload_bytes: int, elapsed_s: float, server_s: float) -> None:
        """A request whose reply had not come `elapsed_s` after it was sent, when the server's
        share would have been about `server_s`: a ceiling on the bandwidth (nothing when the RTT
        is not known yet or the time left no room for the transfer)."""
        if payload_bytes <= 0 or not (math.isfinite(elapsed_s) and math.isfinite(server_s)):
            return
        now = self._clock()
        with self._lock:
            rtt_s = self._rtt_s(now)
            if rtt_s is None:
                return
            transfer_s = elapsed_s - server_s - rtt_s
            if transfer_s >= self.resolution_s:
                self._rate.add_ceiling(now, payload_bytes * 8.0 / transfer_s)

    def estimate(self) -> LinkEstimate:
        now = self._clock()
        with self._lock:
            rtt_s = self._rtt_s(now)
            bandwidth = self._rate.rate_bps(now)
            newest = self._rate.newest_s(now)
            return LinkEstimate(
                bandwidth_bps=bandwidth,
                rtt_ms=rtt_s * 1e3 if rtt_s is not None else None,
                samples=self._rate.count(now),
                age_s=now - newest if newest is not None else math.inf,
                near_future_bps=self._rate.near_future_bps(now),
                history_bps=self._rate.history_bps(),
            )

    def _add_rtt(self, now: float, rtt_s: float) -> None:
        self._rtts.append((now, rtt_s))
        # Keep the window and, when it has emptied, the newest round trip.
        while len(self._rtts) > 1 and now - self._rtts[0][0] > self.rtt_window_s:
            self._rtts.popleft()

    def _rtt_s(self, now: float) -> float | None:
        fresh = [r for t, r in self._rtts if now - t <= self.rtt_window_s]
        if fresh:
            return min(fresh)
        return self._rtts[-1][1] if self._rtts else None
