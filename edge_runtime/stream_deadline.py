"""The per-reply deadline of an InferStream call: the stream lasts as long as its inputs, but each
request must be answered within the client's `timeout_s` of being sent. gRPC's own deadline covers
a whole call, so a watchdog thread looks at the oldest unanswered request and, once it is overdue,
cancels the call; the client then raises DEADLINE_EXCEEDED naming that request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import grpc

# How often the watchdog looks: a deadline is kept within this.
_CHECK_S = 0.02


class StreamDeadline:
    """Watches `pending` (request id → (prepared, perf_counter when it was sent)) of `call`."""

    def __init__(self, call: grpc.Call, pending: Mapping[str, tuple[object, float]], timeout_s: float) -> None:
        self.expired: str | None = None
        self._call = call
        self._pending = pending
        self._timeout_s = timeout_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stream-deadline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(_CHECK_S):
            # A snapshot: the client's threads add and remove entries meanwhile.
            sent = [(when, request_id) for request_id, (_, when) in list(self._pending.items())]
            if not sent:
                continue
            oldest, request_id = min(sent)
            waited_s = time.perf_counter() - oldest
            if waited_s > self._timeout_s:
                self.expired = f"no reply to request {request_id} within {self._timeout_s:g} s on the stream"
                self._call.cancel()
                return

    def stop(self) -> None:
        self._stopped.set()
