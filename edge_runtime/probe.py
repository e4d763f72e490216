"""The adaptive client's RTT probe: a tiny ListModels call when the client has been idle.

Every unary request's transfer measures the uplink's bandwidth; the round-trip time needs a call
that carries almost nothing, a ListModels call (a few hundred bytes each way), made at start
(three, back to back) and whenever no request has gone out for `AdaptiveSettings.idle_probe_s`, on
a thread of its own. The first request waits for the first probes (up to `FIRST_PROBE_WAIT_S`): a
probe that shares the uplink with a request's bytes would time the transfer, too. While requests
keep the client busy the RTT is probed every `AdaptiveSettings.probe_s` all the same, right after a
reply: a closed loop never idles, and an RTT that only requests correct can only go down. Failures
are the requests' business.
"""

from __future__ import annotations

import threading
import time

import grpc

from edge_runtime.adaptive import AdaptiveController
from edge_runtime.transport import Transport

# How long an adaptive client's first request waits for the connection and the first RTT probe.
FIRST_PROBE_WAIT_S = 2.0
# Probes made back to back at start, the estimator keeping the smallest.
FIRST_PROBES = 3


class RttProbe:
    """Probes the RTT over `transport` into `adaptive`'s estimator until closed."""

    def __init__(self, transport: Transport, adaptive: AdaptiveController) -> None:
        self._transport = transport
        self._adaptive = adaptive
        self._closed = threading.Event()
        # Set once the first probe is done (or given up).
        self._first = threading.Event()
        threading.Thread(target=self._probe_when_idle, name="edge-rtt-probe", daemon=True).start()

    def wait_first(self) -> None:
        """Waits for the first probe, up to FIRST_PROBE_WAIT_S."""
        self._first.wait(FIRST_PROBE_WAIT_S)

    def close(self) -> None:
        self._closed.set()

    def _probe_once(self) -> None:
        sent = time.perf_counter()
        try:
            self._transport.list_models()
        except (grpc.RpcError, ValueError):  # ValueError: the client closed the channel meanwhile
            return
        self._adaptive.estimator.observe_rtt(time.perf_counter() - sent)

    def _probe_when_idle(self) -> None:
        settings = self._adaptive.settings
        idle_s, every_s = settings.idle_probe_s, settings.probe_s
        # The first call on a channel also opens the connection (TCP and HTTP/2 handshakes,
        # more than one round trip): connect first so that the probes time round trips only.
        self._transport.wait_ready(FIRST_PROBE_WAIT_S)
        # The first probes on a new connection meet both ends' first-call costs (and one that met
        # a stall would say the RTT is seconds): a few back to back, the estimator keeping the least.
        for _ in range(FIRST_PROBES):
            self._probe_once()
        self._first.set()
        last_probe = time.monotonic()
        while not self._closed.is_set():
            now = time.monotonic()
            quiet_s = now - self._adaptive.last_activity
            if quiet_s >= idle_s:
                self._probe_once()
                last_probe = time.monotonic()
            elif every_s > 0 and now - last_probe >= every_s:
                # Requests keep the device busy (a closed loop is never idle, and its estimate
                # would otherwise only ever be corrected downward): probe right after the next
                # reply, while the next head runs and the uplink is quiet; or now, when no reply
                # comes (everything runs on the device and the uplink is quiet anyway).
                self._adaptive.replied.clear()
                self._adaptive.replied.wait(idle_s)
                if self._closed.is_set():
                    return
                self._probe_once()
                last_probe = time.monotonic()
            else:
                due = [idle_s - quiet_s] + ([every_s - (now - last_probe)] if every_s > 0 else [])
                self._closed.wait(max(min(due), 0.05))
