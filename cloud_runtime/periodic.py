"""Work done every so often on a thread of its own, and once more when stopped: how the server
keeps per-request bookkeeping (log lines, metrics) off the request's path. A timer rather than a
wake-up per item: on a server given one core a thread woken by each request competes with that
request before its reply is out (measured with bench/overhead.py); a timer wakes a few times a
second whatever the request rate, and does what came in between at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Calls `work` every `interval_s` on daemon thread `name` until `stop`, which calls it a last
    time (so nothing queued before the stop is left undone) and returns once the thread ended."""

    def __init__(self, work: Callable[[], None], interval_s: float, name: str) -> None:
        self._work = work
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._work()
        self._work()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
