"""When the tail runs on the device because the server cannot be used (EdgeConfig.fallback).

With fallback on, a request the server could not answer — retries spent, the deadline passed, or
its queue full (`FALLBACK_CODES`) — runs its tail here, from the bundle's tail.onnx, and the
result says so (`EdgeResult.fallback`, `fallback_reason`). Later requests run here too, and one
every `probe_interval_s` tries the server first (once, without retries), so the client returns to
split mode once it is back. A refusal of the request itself (a wrong bundle, a bad tensor) is
never hidden. `FallbackState` holds that state for the threads that call the client.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import grpc

from protos.errors import SplitInferError

log = logging.getLogger(__name__)

# Failures after which running the tail here is the better answer: the server is gone, too slow,
# or overloaded. A refusal of the request itself (a wrong bundle, a bad tensor) is never hidden.
FALLBACK_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class FallbackState:
    """Split mode, or avoiding `server` (and why) until a probe finds it back; thread-safe."""

    def __init__(self, server: str | None, *, enabled: bool, probe_interval_s: float) -> None:
        self.server = server
        self.enabled = enabled
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        # Why the server is being avoided ("" while in split mode) and when the next request may try it.
        self._avoiding = ""
        self._next_probe = 0.0
        # When a request last got the server's answer (time.monotonic).
        self._answered_at = -math.inf

    @property
    def avoiding(self) -> str:
        return self._avoiding

    def route(self) -> tuple[str, bool]:
        """For the next request: why the server is avoided ("": it is not), and whether this
        request tries it anyway (a probe, due once per `probe_interval_s`)."""
        with self._lock:
            avoiding, probe = self._avoiding, False
            if avoiding and time.monotonic() >= self._next_probe:
                # This request tries the server (once); the others keep running here meanwhile.
                probe, self._next_probe = True, time.monotonic() + self.probe_interval_s
        return avoiding, probe

    def covers(self, error: SplitInferError) -> bool:
        """Whether the tail runs here for a request that failed with `error`."""
        return self.enabled and error.status_code in FALLBACK_CODES

    def failed(self, first_sent: float, reason: str) -> None:
        """A request first sent at `first_sent` (time.monotonic) could not reach the server."""
        with self._lock:
            # A request that went out before another was answered speaks of an older server:
            # this one runs here, but the client stays in split mode.
            if first_sent > self._answered_at:
                if not self._avoiding:
                    log.warning("running the tail on the device until server %s is back: %s", self.server, reason)
                    self._next_probe = time.monotonic() + self.probe_interval_s
                self._avoiding = reason

    def answered(self) -> None:
        """The server answered a request: split mode (again)."""
        with self._lock:
            self._answered_at = time.monotonic()
            if self._avoiding:
                self._avoiding = ""
                log.info("server %s is back: split inference again", self.server)
