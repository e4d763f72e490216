"""The tun backend's forwarder: the thread that carries IP packets between the two namespaces'
TUN devices, one `PacketDirection` per direction (up: E→S, down: S→E), doing what mahimahi's
link does:
1. **Loss**: each packet read from the sending TUN is dropped with probability `Shape.loss`
   (a seeded generator per direction: a run's drops can be replayed).
2. **Queue**: drop-tail, `Shape.queue_bytes` (payload bytes, as everywhere) raised by the header
   share of full-size packets, like the kernel backend's bfifo.
3. **Bottleneck** (netemu/capacity.py, the one the user backend uses too): the packet at the head
   of the queue leaves when the link's capacity for its IP bytes has accrued. A fixed rate accrues
   `rate_bps × 1500/1448` bit/s of IP bytes: a full-size packet (IPv4 20 + TCP 20 + timestamps 12
   header bytes beside 1448 of payload) then carries `rate_bps` of payload, the meaning
   `Shape.rate_bps` has in every backend; smaller packets (ACKs, a ping) pay a larger header
   share, as on a real link. A trace is replayed as mahimahi does: each delivery opportunity
   carries up to `trace.packet_bytes` (1500) bytes of IP packets, a packet may span opportunities,
   and what an opportunity finds no packet for is lost. A bulk transfer therefore gets 1448/1500
   of the trace's mean rate as payload. Each packet leaves at the instant its capacity is
   complete, not when the thread wakes up, so the rate holds even when wake-ups are late.
4. **Delay line**: each packet is held for `delay_ms` ± `jitter_ms` (uniform, never below 0) from
   when it left the bottleneck, never overtaking an earlier packet, then written to the other TUN.

One thread owns the TUN file descriptors (non-blocking, read in batches, waited on with epoll) and
a clock of deadlines (`time.monotonic()`); it wakes for the next departure or release and lets
packets due within `_BATCH_S` of a wake-up go with it, so 100 Mbit/s does not cost a wake-up per
packet.
"""

from __future__ import annotations

import logging
import math
import os
import random
import selectors
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from netemu.capacity import Bottleneck, DelayLine
from netemu.eventloop import PreciseEpollSelector, tighten_timer_slack
from netemu.shape import DIRECTIONS, Shape

log = logging.getLogger(__name__)

MTU_BYTES = 1500
HEADER_BYTES = 52  # IPv4 20 + TCP 20 + timestamps 12
MSS_BYTES = MTU_BYTES - HEADER_BYTES
IP_FACTOR = MTU_BYTES / MSS_BYTES
# Packets due this close to a wake-up leave with it: ≤ 0.5 ms early, and only when packets follow
# each other that closely (above ~24 Mbit/s); a lone packet (a ping) leaves on time.
_BATCH_S = 0.0005
# Reads per TUN per wake-up, so that one busy direction cannot hold up the other's deadlines.
_READ_BATCH = 64
_READ_BYTES = 65536


@dataclass(frozen=True)
class DirectionStats:
    """What one direction's forwarder did since the link started (packets are IP packets)."""

    packets: int = 0  # read from the sending TUN
    dropped_loss: int = 0  # dropped by the random loss
    dropped_queue: int = 0  # dropped because the queue was full
    forwarded: int = 0  # written to the receiving TUN
    forwarded_bytes: int = 0

    @property
    def loss_share(self) -> float:
        """Share of the packets read that the random loss dropped."""
        return self.dropped_loss / self.packets if self.packets else 0.0


class PacketDirection:
    """One direction of the forwarder: loss → queue → bottleneck → delay line (module's doc).
    Times are `time.monotonic()`; only the forwarder's thread calls it, under its lock."""

    def __init__(self, shape: Shape, rng: random.Random, out_fd: int, now: float) -> None:
        self._rng = rng  # loss and jitter draw from one generator, in the order packets meet them
        self._out_fd = out_fd
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self._bottleneck = Bottleneck(shape, now, overhead=IP_FACTOR)
        self._line: DelayLine[bytes] = DelayLine(rng)
        self.next_departure = math.inf
        self.counts = {"packets": 0, "dropped_loss": 0, "dropped_queue": 0, "forwarded": 0, "forwarded_bytes": 0}
        self._set(shape)

    def apply(self, shape: Shape, now: float) -> None:
        """A new shape from `now` on; capacity accrued so far at the old one is kept."""
        self._bottleneck.apply(shape, now, busy=bool(self.queue))
        self._set(shape)

    def _set(self, shape: Shape) -> None:
        self.shape = shape
        self._limit_bytes = max(MTU_BYTES, math.ceil(shape.queue_bytes * IP_FACTOR))

    @property
    def trace_origin(self) -> float | None:
        return self._bottleneck.trace_origin

    @property
    def idle(self) -> bool:
        return not self.queue and not self._line

    @property
    def next_event(self) -> float:
        return min(self.next_departure, self._line.next_release)

    def arrive(self, packet: bytes, now: float) -> None:
        self.counts["packets"] += 1
        if self.shape.loss and self._rng.random() < self.shape.loss:
            self.counts["dropped_loss"] += 1
            return
        if not self.shape.shaped:
            self._delay(packet, now)
            return
        if self.queued_bytes + len(packet) > self._limit_bytes:
            self.counts["dropped_queue"] += 1
            return
        if not self.queue:
            self._bottleneck.start(now)
        self.queue.append(packet)
        self.queued_bytes += len(packet)

    def transmit(self, now: float) -> None:
        """Sends every packet whose capacity is complete by `now` (+ the batch window), each
        departing at the instant its capacity was."""
        bottleneck = self._bottleneck
        while self.queue:
            size = len(self.queue[0])
            while self.shape.shaped and bottleneck.credit < size:
                need = size - bottleneck.credit
                due = bottleneck.due(need)
                if due > now + _BATCH_S:
                    self.next_departure = due
                    return
                bottleneck.take(due, need)
            bottleneck.spend(size)
            self.queued_bytes -= size
            self._delay(self.queue.popleft(), bottleneck.mark if self.shape.shaped else now)
        bottleneck.stop()
        self.next_departure = math.inf

    def release(self, now: float) -> None:
        for packet in self._line.released(now + _BATCH_S):
            os.write(self._out_fd, packet)
            self.counts["forwarded"] += 1
            self.counts["forwarded_bytes"] += len(packet)

    def _delay(self, packet: bytes, departed: float) -> None:
        self._line.hold(self._line.release_time(self.shape, departed), packet)


class Forwarder:
    """The thread that carries packets between the two TUNs (see the module's doc). `fds` maps a
    direction to the TUN it reads from and the TUN it writes to."""

    def __init__(self, fds: dict[str, tuple[int, int]], shapes: dict[str, Shape], seed: int) -> None:
        now = time.monotonic()
        self._lock = threading.Lock()
        # One seeded generator per direction: a run's losses and jitter can be replayed.
        self._directions = {
            name: PacketDirection(shapes[name], random.Random(f"{seed}-{name}"), fds[name][1], now)
            for name in DIRECTIONS
        }
        self._selector = PreciseEpollSelector()
        for name in DIRECTIONS:
            os.set_blocking(fds[name][0], False)
            self._selector.register(fds[name][0], selectors.EVENT_READ, name)
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK)
        self._selector.register(self._wakeup, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="netemu-tun-forwarder", daemon=True)
        self._thread.start()

    def shape(self, direction: str) -> Shape:
        return self._directions[direction].shape

    def trace_origin(self, direction: str) -> float | None:
        return self._directions[direction].trace_origin

    def stats(self, direction: str) -> DirectionStats:
        with self._lock:
            return replace(DirectionStats(), **self._directions[direction].counts)

    @property
    def idle(self) -> bool:
        with self._lock:
            return all(d.idle for d in self._directions.values())

    def apply(self, direction: str, shape: Shape) -> None:
        with self._lock:
            self._directions[direction].apply(shape, time.monotonic())
        self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(10.0)
        self._selector.close()
        os.close(self._wakeup)

    def _wake(self) -> None:
        os.eventfd_write(self._wakeup, 1)

    def _run(self) -> None:
        try:
            self._forward()
        except BaseException:
            log.exception("netemu: the tun forwarder failed, the link no longer carries packets")
            raise

    def _forward(self) -> None:
        tighten_timer_slack()
        directions = self._directions
        while not self._stopping:
            with self._lock:
                now = time.monotonic()
                for direction in directions.values():
                    direction.transmit(now)
                    direction.release(now)
                deadline = min(direction.next_event for direction in directions.values())
            timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
            events = self._selector.select(timeout)
            with self._lock:
                for key, _ in events:
                    if key.data is None:
                        os.eventfd_read(self._wakeup)
                    else:
                        self._read(key.fd, directions[key.data])

    def _read(self, fd: int, direction: PacketDirection) -> None:
        now = time.monotonic()
        # Departures first, so that a packet finds the queue as it is now.
        direction.transmit(now)
        for _ in range(_READ_BATCH):
            try:
                packet = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                return
            direction.arrive(packet, now)
