"""Dynamic batching: the requests of one model wait in a bounded queue, and one thread per model
runs them as batches.

`TailService` is the public face; this module is its private machinery. `ModelQueue.submit`
blocks its caller (a gRPC worker that has already checked and decoded its request) until the
request's batch has run. The queue's thread takes the oldest request and every queued one for the
same tail whose tensors have the same shapes beyond axis 0, up to `max_batch`. It waits for more
to come only as long as the measured arrival rate justifies, and never beyond `window_ms` after the
oldest arrived: a request that reaches an idle tail while requests come sparsely (more than a
window apart, on average) runs at once, in its own caller's thread (no hand-off to the queue's
thread and back), with no tax for batching it never gets; while they come in
a burst (closed-loop clients answered together), the wait ends as soon as the burst pauses (no
arrival for two mean gaps). Under load no one waits at all: the requests that arrived while a
batch ran are already older than the window. The batch's tensors are
concatenated along axis 0, the tail runs once, and each request gets its own rows back. A tail that
cannot batch (its manifest says so) runs one request at a time through the same queue, so its
requests get the same bound and deadline handling.

Nobody is left waiting: when a batch fails, every request in it gets the exception; a request
whose deadline passed while it queued is answered DeadlineExceededError instead of being run; a
request that finds the queue full (`max_queue` waiting) is refused at once with QueueFullError,
whose `retry_after_ms` estimates when the queue will have drained; on close, whatever still waits
is answered ServerUnavailableError.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from protos.errors import ServerUnavailableError, SplitInferError

log = logging.getLogger(__name__)

DEFAULT_WINDOW_MS = 2.0
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_QUEUE = 128
# Until a batch has run, the retry hint assumes batches this long.
_FIRST_GUESS_S = 0.01
# Weight of the newest batch in the running mean of batch durations behind the retry hint, and
# of the newest gap in the running mean of the gaps between arrivals.
_EWMA_WEIGHT = 0.2
# A gap this long counts as this long: one idle minute must not take minutes of bursts to forget.
_MAX_GAP_S = 1.0


class DeadlineExceededError(SplitInferError):
    """The request's deadline passed before its tail ran; it was dropped unrun."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class QueueFullError(SplitInferError):
    """The model's queue is full: the server is refusing work rather than holding it without bound."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class BatchingConfig:
    """`window_ms`: the longest a request waits for others to join its batch (0: never waits); how
    long within it is the measured arrival rate's choice, unless `fixed_window`: then every batch
    waits out the window (or until it is full), the most batching at a lone request's expense.
    `max_batch`: requests per batch (1: no batching). `max_queue`: requests of one model that may
    wait; beyond it they are refused RESOURCE_EXHAUSTED."""

    window_ms: float = DEFAULT_WINDOW_MS
    max_batch: int = DEFAULT_MAX_BATCH
    max_queue: int = DEFAULT_MAX_QUEUE
    fixed_window: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_ms) and 0 <= self.window_ms <= 10_000):
            raise SplitInferError(f"batch window {self.window_ms!r} ms is not between 0 and 10000")
        if not 1 <= self.max_batch <= 4096:
            raise SplitInferError(f"max batch {self.max_batch!r} is not between 1 and 4096")
        if not 1 <= self.max_queue <= 65536:
            raise SplitInferError(f"max queue {self.max_queue!r} is not between 1 and 65536")


class BatchObserver(Protocol):
    """Told of each batch run and each change of a queue's depth (metrics)."""

    def batch_ran(self, model_id: str, size: int) -> None: ...

    def queue_depth(self, model_id: str, depth: int) -> None: ...


# Runs a tail on a feed whose axis 0 holds the batch; returns its outputs in a fixed order.
RunTail = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    """One request's rows of its batch's outputs, and how long the batch's tail call took."""

    outputs: tuple[np.ndarray, ...]
    tail_ms: float


@dataclass(frozen=True)
class _Pending:
    tail: Hashable
    run: RunTail
    batchable: bool
    feed: Mapping[str, np.ndarray]
    # Requests join a batch only when these match: the same tensors, the same shapes beyond axis 0.
    signature: tuple
    deadline: float | None
    enqueued: float
    describe: str  # "model 'x'", for messages
    future: Future


class ModelQueue:
    """The bounded queue of one model's requests and the thread that runs them in batches."""

    def __init__(self, model_id: str, config: BatchingConfig, observer: BatchObserver | None = None) -> None:
        self.model_id = model_id
        self.config = config
        self._observer = observer
        self._window_s = config.window_ms / 1e3
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._batch_s = _FIRST_GUESS_S
        # Whether a tail call of this model is running (the queue's thread's or a caller's): one at
        # a time, as one thread running them all would.
        self._busy = False
        # The mean gap between arrivals (none yet: sparse) and when the last one came.
        self._gap_s = math.inf
        self._last_arrival: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{model_id}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(
        self,
        tail: Hashable,
        run: RunTail,
        feed: Mapping[str, np.ndarray],
        *,
        batchable: bool,
        deadline: float | None,
        describe: str,
    ) -> BatchResult:
        """Queues one request (tensors with its rows on axis 0) for `tail` and waits for its rows of
        the outputs; raises what its batch raised, DeadlineExceededError or QueueFullError."""
        pending = _Pending(tail, run, batchable, feed, signature(feed), deadline, time.monotonic(), describe, Future())
        with self._cond:
            if self._closed:
                raise ServerUnavailableError(f"{describe}: the server is shutting down")
            depth = len(self._queue)
            if depth >= self.config.max_queue:
                retry_ms = self._retry_after_ms(depth)
                raise QueueFullError(
                    f"{describe}: {depth} requests are already queued (max queue {self.config.max_queue}); "
                    f"retry after {retry_ms} ms",
                    retry_ms,
                )
            self._observe_arrival(pending.enqueued)
            inline = not self._queue and not self._busy and self._wait_s(pending) <= 0
            if inline:
                self._busy = True
            else:
                self._queue.append(pending)
                self._observe_depth()
                self._cond.notify()
        if inline:
            # Nobody to batch with and the tail idle: run it here. Handing it to the queue's thread
            # and waiting for it cost two thread switches, measured at ~0.1 ms a request
            # (bench/overhead.py), a fifth of the serving stack's own cost.
            try:
                if not self._expired(pending, time.monotonic()):
                    self._run([pending])
            finally:
                with self._cond:
                    self._busy = False
                    if self._queue:  # waking the queue's thread for nothing would cost its GIL round
                        self._cond.notify()
        # Always resolved: by the batch, the deadline check, or close().
        return pending.future.result()

    @property
    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait before its tail starts: the batches queued
        ahead of it and the one running, at the running mean batch time; 0 at an idle tail."""
        depth, busy = len(self._queue), self._busy
        if not depth and not busy:
            return 0.0
        return (depth / self.config.max_batch + busy) * self._batch_s

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the thread after the batch it is running; requests still queued are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _retry_after_ms(self, depth: int) -> int:
        # The batches ahead of a retry: the queue as it is, in batches of max_batch, and the one running.
        batches = depth / self.config.max_batch + 1
        return max(1, round(batches * self._batch_s * 1e3))

    def _observe_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, _MAX_GAP_S)
            self._gap_s = gap if math.isinf(self._gap_s) else self._gap_s + _EWMA_WEIGHT * (gap - self._gap_s)
        self._last_arrival = now

    def _wait_s(self, oldest: _Pending) -> float:
        """How long the batch of `oldest` waits now for more requests: 0 when the window has passed,
        when arrivals are too sparse to expect one within the window, or when the burst paused."""
        now = time.monotonic()
        window_left = oldest.enqueued + self._window_s - now
        if self.config.fixed_window:
            return max(0.0, window_left)
        if window_left <= 0 or self._gap_s >= self._window_s or self._last_arrival is None:
            return 0.0
        return max(0.0, min(window_left, self._last_arrival + 2 * self._gap_s - now))

    def _observe_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.model_id, len(self._queue))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._busy) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    refused = list(self._queue)
                    self._queue.clear()
                    self._observe_depth()
                    break
                oldest = self._queue[0]
                limit = self.config.max_batch if oldest.batchable else 1
                while len(self._queue) < limit and not self._closed:
                    wait_s = self._wait_s(oldest)
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._closed:
                    continue
                batch = self._take(oldest, limit)
                self._observe_depth()
                self._busy = bool(batch)
            if batch:
                try:
                    self._run(batch)
                finally:
                    with self._cond:
                        self._busy = False
        for pending in refused:
            pending.future.set_exception(ServerUnavailableError(f"{pending.describe}: the server is shutting down"))

    def _take(self, oldest: _Pending, limit: int) -> list[_Pending]:
        """Removes the oldest request and those that can join its batch (up to `limit`) from the
        queue; answers the ones among them whose deadline has passed instead of keeping them."""
        batch: list[_Pending] = []
        rest: collections.deque[_Pending] = collections.deque()
        now = time.monotonic()
        for pending in self._queue:
            joins = len(batch) < limit and pending.tail == oldest.tail and pending.signature == oldest.signature
            if not joins:
                rest.append(pending)
            elif not self._expired(pending, now):
                batch.append(pending)
        self._queue = rest
        return batch

    @staticmethod
    def _expired(pending: _Pending, now: float) -> bool:
        """Answers `pending` DeadlineExceededError when its deadline has passed (the tail is the
        expensive part and cannot be interrupted: nobody waits for this answer); whether it did."""
        if pending.deadline is None or now < pending.deadline:
            return False
        pending.future.set_exception(
            DeadlineExceededError(
                f"{pending.describe}: the client's deadline passed {(now - pending.deadline) * 1e3:.1f} ms "
                f"before running the tail (queued {(now - pending.enqueued) * 1e3:.1f} ms); dropped, its tail not run"
            )
        )
        return True

    def _run(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        try:
            rows = run_together(batch[0].run, [p.feed for p in batch], batch[0].describe)
        except Exception as err:
            # Everyone in the batch gets it: nobody is left waiting for rows that will not come.
            for pending in batch:
                pending.future.set_exception(err)
            return
        ran = time.monotonic()
        self._batch_s += _EWMA_WEIGHT * ((ran - start) - self._batch_s)
        if self._observer is not None:
            self._observer.batch_ran(self.model_id, len(batch))
        for pending, outputs in zip(batch, rows):
            pending.future.set_result(BatchResult(outputs, (ran - start) * 1e3))


def signature(feed: Mapping[str, np.ndarray]) -> tuple:
    """What requests must share to run in one batch: tensor names, shapes beyond axis 0, dtypes."""
    return tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in feed.items()))


def run_together(
    run: RunTail, feeds: Sequence[Mapping[str, np.ndarray]], describe: str
) -> list[tuple[np.ndarray, ...]]:
    """Runs `feeds` (of one signature) as one call, concatenated along axis 0; each feed's rows of
    the outputs, in order. One feed runs as it is."""
    if len(feeds) == 1:
        return [tuple(run(feeds[0]))]
    joined = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
    outputs = run(joined)
    sizes = [int(next(iter(feed.values())).shape[0]) if feed else 1 for feed in feeds]
    for output in outputs:
        if output.ndim == 0 or output.shape[0] != sum(sizes):
            raise SplitInferError(
                f"{describe}: the tail returned shape {list(output.shape)} for a batch of {sum(sizes)} rows"
            )
    bounds = np.cumsum([0, *sizes])
    return [tuple(output[bounds[i] : bounds[i + 1]] for output in outputs) for i in range(len(feeds))]
