"""The emulated bottleneck's clockwork, one implementation for every backend that shapes in user
space: what a direction may carry and when (`Capacity`: unlimited, a fixed rate, or a replayed
trace), the capacity it has accrued but not spent (`Bottleneck`), and the delay line that holds
what has left it (`DelayLine`). They know nothing of sockets, packets or threads: the user-space
relay (netemu/streams.py) drives them with byte chunks from its asyncio loop, the tun forwarder
(netemu/backends/forwarder.py) with IP packets from its thread. Capacity accrues only while
something is queued and is lost while the queue is empty, as on a work-conserving link; it is
accounted to the instant it accrues, not to when a timer fires, so late wake-ups do not lower the
rate; a new shape applies at once to what is already queued. Times are in seconds of one clock
chosen by the caller (loop time, `time.monotonic()`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from netemu.shape import Shape
from netemu.traces import PACKET_BYTES, RateTrace

T = TypeVar("T")

# The granularity a backend may carry at once: ~500 departures per second at any rate.
CHUNK_S = 0.002


class Capacity(Protocol):
    """What a direction may carry. `time_for(t0, n)`: when `n` more bytes than were claimed up to
    `t0` will have accrued; `take(n)`: claims them (at least `n`, as `time_for` promised);
    `accrue(t0, t1)`: claims what accrued in (t0, t1]; `skip(now)`: what accrued before `now`
    went unused (the link was idle). A model claims each byte of capacity once."""

    quantum_bytes: float

    def time_for(self, t0: float, nbytes: float) -> float: ...

    def take(self, nbytes: float) -> float: ...

    def accrue(self, t0: float, t1: float) -> float: ...

    def skip(self, now: float) -> None: ...


class Unlimited:
    quantum_bytes = math.inf

    def time_for(self, t0: float, nbytes: float) -> float:
        return t0

    def take(self, nbytes: float) -> float:
        return math.inf

    def accrue(self, t0: float, t1: float) -> float:
        return math.inf

    def skip(self, now: float) -> None:
        pass


class FixedRate:
    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self.quantum_bytes = max(PACKET_BYTES, bytes_per_s * CHUNK_S)

    def time_for(self, t0: float, nbytes: float) -> float:
        return t0 + nbytes / self.bytes_per_s

    def take(self, nbytes: float) -> float:
        # Exactly what was asked: recomputing it from the rounded instant could leave a caller short.
        return nbytes

    def accrue(self, t0: float, t1: float) -> float:
        return max(0.0, t1 - t0) * self.bytes_per_s

    def skip(self, now: float) -> None:
        pass


class TraceRate:
    """A trace replayed from `origin` on: each delivery opportunity carries `trace.packet_bytes`.
    Opportunities are claimed by index, not by time, so that none is used twice however the
    instants round (mahimahi's traces repeat a millisecond for several packets in it)."""

    def __init__(self, trace: RateTrace, origin: float) -> None:
        self.trace = trace
        self.origin = origin
        packets = math.ceil(trace.mean_rate_bps / 8 * CHUNK_S / trace.packet_bytes)
        self.quantum_bytes = max(1, packets) * trace.packet_bytes
        self._next = 0  # the first opportunity not claimed yet

    def time_for(self, t0: float, nbytes: float) -> float:
        return self.origin + self.trace.opportunity_s(self._next + self._packets(nbytes) - 1)

    def take(self, nbytes: float) -> float:
        packets = self._packets(nbytes)
        self._next += packets
        return packets * self.trace.packet_bytes

    def accrue(self, t0: float, t1: float) -> float:
        reached = self.trace.count_until(t1 - self.origin)
        claimed = max(0, reached - self._next)
        self._next += claimed
        return claimed * self.trace.packet_bytes

    def skip(self, now: float) -> None:
        self._next = max(self._next, self.trace.count_until(now - self.origin))

    def _packets(self, nbytes: float) -> int:
        return max(1, math.ceil(nbytes / self.trace.packet_bytes))


def capacity_for(shape: Shape, now: float, *, overhead: float = 1.0) -> Capacity:
    """The capacity `shape` gives from `now` on, counted in the bytes the caller queues: a fixed
    payload rate is raised by `overhead` when those bytes include headers (the tun backend's IP
    packets); a trace's opportunities carry its packet bytes of whatever is queued."""
    if shape.trace is not None:
        return TraceRate(shape.trace, now)
    if shape.rate_bps is not None:
        return FixedRate(shape.rate_bps * overhead / 8)
    return Unlimited()


class Bottleneck:
    """The capacity a direction has accrued and not spent yet (`credit`, in bytes), accounted up to
    `mark`. `mark` may run ahead of the clock when a caller takes capacity that is due within its
    timer's slack; it never moves back."""

    def __init__(self, shape: Shape, now: float, *, overhead: float = 1.0) -> None:
        self._overhead = overhead
        self.capacity = capacity_for(shape, now, overhead=overhead)
        self.credit = 0.0
        self.mark = now

    @property
    def trace_origin(self) -> float | None:
        return self.capacity.origin if isinstance(self.capacity, TraceRate) else None

    def start(self, now: float) -> None:
        """The queue was empty and is not any more: capacity accrues from now, none was banked."""
        self.mark = max(self.mark, now)
        self.credit = 0.0
        self.capacity.skip(now)

    def stop(self) -> None:
        """The queue ran empty: an idle link banks no capacity."""
        self.credit = 0.0

    def apply(self, shape: Shape, now: float, *, busy: bool) -> None:
        """A new shape from `now` on; capacity accrued so far at the old one (while `busy`) is kept."""
        if busy:
            self.accrue(now)
        # The mark stays, even ahead of `now`: capacity taken early up to it is not counted twice.
        if math.isinf(self.credit):
            self.credit = 0.0
        self.capacity = capacity_for(shape, now, overhead=self._overhead)

    def accrue(self, now: float) -> None:
        """Adds the capacity accrued up to `now`."""
        if now > self.mark:
            self.credit += self.capacity.accrue(self.mark, now)
            self.mark = now

    def due(self, nbytes: float) -> float:
        """When `nbytes` more than the credit will have accrued."""
        return self.capacity.time_for(self.mark, nbytes)

    def take(self, due: float, nbytes: float) -> None:
        """Adds the `nbytes` that `due(nbytes)` said are complete at `due`, before the clock may
        have reached it."""
        self.credit += self.capacity.take(nbytes)
        self.mark = due

    def spend(self, nbytes: float) -> None:
        if not math.isinf(self.credit):
            self.credit -= nbytes


class DelayLine(Generic[T]):
    """Holds what left the bottleneck for the one-way delay ± jitter, in order: each item's delay
    is drawn uniformly from delay_ms ± jitter_ms (never below 0), then raised so that it is never
    released before an earlier item; a TCP stream must not be reordered."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._last_release = 0.0
        self.entries: deque[tuple[float, T]] = deque()

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def next_release(self) -> float:
        return self.entries[0][0] if self.entries else math.inf

    def release_time(self, shape: Shape, departed: float) -> float:
        """When what departed at `departed` leaves the line (draws the jitter)."""
        delay_ms = shape.delay_ms
        if shape.jitter_ms:
            delay_ms = max(0.0, delay_ms + self._rng.uniform(-shape.jitter_ms, shape.jitter_ms))
        self._last_release = max(departed + delay_ms / 1e3, self._last_release)
        return self._last_release

    def hold(self, release: float, item: T) -> None:
        self.entries.append((release, item))

    def released(self, by: float) -> Iterator[T]:
        """Takes out, in order, the items due by `by`."""
        while self.entries and self.entries[0][0] <= by:
            yield self.entries.popleft()[1]
