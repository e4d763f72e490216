"""One direction of the user-space link, for byte streams: the queue, transmitter and delay line
that every connection through a relay (netemu/relay.py) shares, like a real link, run as two
asyncio tasks over the shared bottleneck (netemu/capacity.py).
1. **Queue.** Bytes read from senders wait in one FIFO queue of at most `Shape.queue_bytes`. When
   it is full the relay stops reading from the senders' sockets, so TCP flow control pushes back
   on them: their bytes wait in the kernel's socket buffers (sender side, per connection, as in a
   sender's kernel on a real path) and nothing is ever dropped. A full queue delays every
   connection behind it (bufferbloat); the socket buffers delay only their own.
2. **Transmitter.** Drains the queue at the shape's rate: capacity accrues while the queue is not
   empty (a fixed payload bit rate, or 1500 bytes per delivery opportunity of a trace) and is lost
   while it is empty, as on a work-conserving link. Bytes leave in chunks of ~2 ms of capacity (at
   least one 1500-byte packet); a chunk leaves when the capacity for it has accrued, so a new rate
   applies at once to every byte still queued, including a partly sent chunk.
3. **Delay line.** Each departed chunk is held for the one-way delay ± jitter, never overtaking an
   earlier chunk (release times never decrease), then handed to its connection's writer. A
   receiver that stops reading stops its own sender (the relay caps its released bytes per
   connection), and at most 4 MiB are in flight per direction.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections import deque

from netemu.capacity import Bottleneck, DelayLine
from netemu.shape import Shape

# Per direction: bytes held in the delay line (in flight). It bounds memory and the backlog an
# unlimited link (the kernel backend's delay stage) can build; a rate-limited link reaches it only
# above 4 MiB / delay (335 Mbit/s at 100 ms).
_MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024
# A timer costs a loop iteration and fires ~0.1 ms late; capacity due sooner than this is taken
# now, and a chunk due out of the delay line sooner than this is released now. Both keep the rate
# exact (capacity is accounted to the instant it accrues) and centre the delay on its setting.
_EARLY_S = 0.0001

Pieces = list[memoryview] | None  # a connection's departed bytes; None: the end of its stream


class Wakeup:
    """Coroutines wait until notified or until a deadline (loop time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, deadline: float | None = None) -> None:
        future = self._loop.create_future()
        self._waiters.add(future)
        timer = self._loop.call_at(deadline, resolve, future) if deadline is not None else None
        try:
            await future
        finally:
            self._waiters.discard(future)
            if timer is not None:
                timer.cancel()

    def notify(self) -> None:
        for future in self._waiters:
            resolve(future)


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Flow:
    """One direction of one relayed connection: bytes read from `src` are written to `dst`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.out: deque[memoryview | None] = deque()  # released by the delay line, not yet written
        self.out_bytes = 0
        self.out_ready = Wakeup(loop)
        self.dead = False

    def push(self, pieces: Pieces) -> None:
        if self.dead:
            return
        if pieces is None:
            self.out.append(None)
        else:
            self.out.extend(pieces)
            self.out_bytes += sum(len(p) for p in pieces)
        self.out_ready.notify()


class StreamDirection:
    """One direction of the link: queue → transmitter → delay line (see the module's doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shape: Shape, rng: random.Random) -> None:
        self._loop = loop
        self.shape = shape
        self._bottleneck = Bottleneck(shape, loop.time())
        self.queue: deque[list] = deque()  # [flow, memoryview | None (end of stream)]
        self.queued_bytes = 0
        self._line: DelayLine[tuple[Flow, Pieces]] = DelayLine(rng)
        self.in_flight_bytes = 0
        self.delivered_bytes = 0
        # Readers wait on `changed` for queue space, delay-line space or their receiver to drain.
        self.changed = Wakeup(loop)
        self._transmitter = Wakeup(loop)
        self._delay_line = Wakeup(loop)

    # -- called by the relay ------------------------------------------------------------------

    def apply(self, shape: Shape) -> None:
        """A new shape from now on; capacity accrued so far at the old rate is kept."""
        self._bottleneck.apply(shape, self._loop.time(), busy=bool(self.queue))
        self.shape = shape
        self._transmitter.notify()
        self.changed.notify()

    @property
    def trace_origin(self) -> float | None:
        return self._bottleneck.trace_origin

    def room(self) -> int:
        """Bytes a sender may add now."""
        return max(0, min(self.shape.queue_bytes - self.queued_bytes, _MAX_IN_FLIGHT_BYTES - self.in_flight_bytes))

    def enqueue(self, flow: Flow, data: bytes | None) -> None:
        if not self.queue:
            # The link was idle (the mark can be a hair ahead of the clock when the last chunk was
            # taken early).
            self._bottleneck.start(self._loop.time())
            self._transmitter.notify()
        self.queue.append([flow, memoryview(data) if data is not None else None])
        self.queued_bytes += len(data) if data is not None else 0

    def purge(self, flow: Flow) -> None:
        """Forgets a closed connection's bytes: they would only hold up the others."""
        kept = deque(item for item in self.queue if item[0] is not flow)
        self.queued_bytes = sum(len(item[1]) for item in kept if item[1] is not None)
        self.queue = kept
        entries = self._line.entries
        self._line.entries = deque(entry for entry in entries if entry[1][0] is not flow)
        self.in_flight_bytes = sum(_size(pieces) for _, (_, pieces) in self._line.entries)
        self.changed.notify()

    @property
    def idle(self) -> bool:
        return not self.queue and not self._line

    # -- the two tasks of a direction ---------------------------------------------------------

    async def transmit(self) -> None:
        bottleneck = self._bottleneck
        while True:
            if not self.queue:
                await self._transmitter.wait()
                continue
            now = self._loop.time()
            bottleneck.accrue(now)
            self._depart(now)
            if not self.queue:
                bottleneck.stop()
                continue
            need = min(self.queued_bytes, bottleneck.capacity.quantum_bytes) - bottleneck.credit
            due = bottleneck.due(need)
            if due - self._loop.time() <= _EARLY_S:
                # Take the capacity now, accounted to when it accrues: the mark moves ahead of the
                # clock and the next accrual starts there.
                bottleneck.take(due, need)
                self._depart(due)
                if not self.queue:
                    bottleneck.stop()
                continue
            await self._transmitter.wait(due)

    async def deliver(self) -> None:
        while True:
            if not self._line:
                await self._delay_line.wait()
                continue
            released = False
            for flow, pieces in self._line.released(self._loop.time() + _EARLY_S):
                self.in_flight_bytes -= _size(pieces)
                flow.push(pieces)
                released = True
            if released:
                self.changed.notify()
            if self._line:
                await self._delay_line.wait(self._line.next_release - _EARLY_S)

    # -- internals ----------------------------------------------------------------------------

    def _depart(self, now: float) -> None:
        """Sends what the accrued capacity covers, and any ends of streams that come next."""
        credit = self._bottleneck.credit
        budget = self.queued_bytes if math.isinf(credit) else min(int(credit), self.queued_bytes)
        batch, sent = self._take_from_queue(budget)
        if not batch:
            return
        self.queued_bytes -= sent
        self._bottleneck.spend(sent)
        release = self._line.release_time(self.shape, now)
        for flow, pieces in batch:
            if release <= now + _EARLY_S and not self._line:
                flow.push(pieces)
                continue
            if not self._line:
                self._delay_line.notify()
            self._line.hold(release, (flow, pieces))
            self.in_flight_bytes += _size(pieces)
        self.changed.notify()

    def _take_from_queue(self, budget: int) -> tuple[list[tuple[Flow, Pieces]], int]:
        """Up to `budget` bytes off the head of the queue, grouped by connection, and any ends of
        streams met on the way; with the number of bytes taken."""
        sent = 0
        batch: list[tuple[Flow, Pieces]] = []
        while self.queue:
            item = self.queue[0]
            flow, data = item
            if data is None:
                self.queue.popleft()
                batch.append((flow, None))
                continue
            if sent >= budget:
                break
            take = min(len(data), budget - sent)
            if take == len(data):
                self.queue.popleft()
                piece = data
            else:
                piece, item[1] = data[:take], data[take:]
            sent += take
            last = batch[-1][1] if batch and batch[-1][0] is flow else None
            if last is not None:
                last.append(piece)
            else:
                batch.append((flow, [piece]))
        return batch, sent


def _size(pieces: Pieces) -> int:
    return 0 if pieces is None else sum(len(p) for p in pieces)
