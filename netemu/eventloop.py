"""A background asyncio event loop with sub-millisecond timers, for emulators used from sync code.

epoll waits in whole milliseconds rounded up, so a stock asyncio timer fires ~0.9 ms late on
average: twice per round trip (delay line) and once per serialised chunk, which alone would eat a
third of a ±3 ms RTT budget. `PreciseEpollSelector` waits the whole milliseconds in epoll and
sleeps the sub-millisecond rest (~0.15 ms late instead). It keeps epoll, not select(), so file
descriptors above 1024 still work. `LoopThread` runs such a loop in a daemon thread and lets sync
code call coroutines in it.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import selectors
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

_PR_SET_TIMERSLACK = 29


class PreciseEpollSelector(selectors.EpollSelector):
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        deadline = time.monotonic() + timeout
        whole_ms = math.floor(timeout * 1e3) * 1e-3
        events = super().select(whole_ms if whole_ms > 0 else 0)
        if events:
            return events
        # The rest is under 1 ms: I/O that arrives meanwhile waits at most that long.
        rest = deadline - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        return super().select(0)


def tighten_timer_slack() -> None:
    """Linux lets a sleeping thread wake up to 50 µs late (timer slack) to batch wake-ups; this
    thread's timers are the emulated link's clock, so it asks for 1 µs. Best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1000), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class LoopThread:
    """An event loop running in a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.SelectorEventLoop(PreciseEpollSelector())
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tighten_timer_slack()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, function: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
        """Runs `function()` (a coroutine function) in the loop; its result or exception here."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.call from inside its own loop would deadlock")

        async def run() -> T:
            return await function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancels every task, stops the loop and closes it."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():

            async def cancel_all() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                self.call(cancel_all, timeout_s)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()
