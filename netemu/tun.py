"""The tun backend: a packet link between two network namespaces, emulated in user space. Root only.

Topology, all driven from this process:

    client → 127.0.0.1:P  relay "edge" (root namespace, no shaping)
           → a socket opened inside namespace E → TUN t0 (10.202.0.1)
           ⇄ the forwarder (a thread of this process) ⇄
             TUN t1 (10.202.0.2) in namespace S → a listener inside namespace S
           → relay "server" → a socket opened in the root namespace → target

The point of this backend: the TCP connection between E and S crosses the forwarder as IP
packets, so its endpoints' TCP sees the emulated link itself: the real RTT (connection setup, slow
start and congestion control across it), real drops at a full queue, and random loss, each repaired
by TCP's own retransmission. The user and kernel backends end TCP at a relay in front of the delay,
so neither can emulate loss.

The forwarder, per direction (up: E→S, down: S→E), does what mahimahi's link does:
1. **Loss**: each packet read from the sending TUN is dropped with probability `Shape.loss`
   (a seeded generator per direction: a run's drops can be replayed).
2. **Queue**: drop-tail, `Shape.queue_bytes` (payload bytes, as everywhere) raised by the header
   share of full-size packets, like the kernel backend's bfifo.
3. **Bottleneck**: the packet at the head of the queue leaves when the link's capacity for its IP
   bytes has accrued. A fixed rate accrues `rate_bps × 1500/1448` bit/s of IP bytes: a full-size
   packet (IPv4 20 + TCP 20 + timestamps 12 header bytes beside 1448 of payload) then carries
   `rate_bps` of payload, the meaning `Shape.rate_bps` has in every backend; smaller packets (ACKs,
   a ping) pay a larger header share, as on a real link. A trace is replayed as mahimahi does: each
   delivery opportunity carries up to `trace.packet_bytes` (1500) bytes of IP packets, a packet may
   span opportunities, and what an opportunity finds no packet for is lost. A bulk transfer
   therefore gets 1448/1500 of the trace's mean rate as payload (`rate_bps_now` reports that).
   Capacity is accounted to the instant it accrues, not to when the thread wakes up, so the rate
   holds even when wake-ups are late; a new rate applies at once, to the packets already queued.
4. **Delay line**: each packet is held for `delay_ms` ± `jitter_ms` (uniform, never below 0) from
   when it left the bottleneck, never overtaking an earlier packet, then written to the other TUN.

One thread owns the TUN file descriptors (non-blocking, read in batches, waited on with epoll) and
a clock of deadlines; it wakes for the next departure or release and lets packets due within
`_BATCH_S` of a wake-up go with it, so 100 Mbit/s does not cost a wake-up per packet.

Cleanup: the namespaces (netemu-<pid>-<n>-edge/-server, see netemu/namespaces.py) are removed on
close(), at exit, and by any later link that finds namespaces of a process that is gone.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import logging
import math
import os
import random
import selectors
import shutil
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from types import TracebackType

from netemu.eventloop import LoopThread, PreciseEpollSelector, tighten_timer_slack
from netemu.namespaces import in_namespace, new_tag, relay_across, remove_namespaces, remove_stale_namespaces, run, stop_relays
from netemu.proxy import DIRECTIONS, ShapedRelay, parse_address, shape_with
from netemu.shape import Shape
from protos.errors import SplitInferError

log = logging.getLogger(__name__)

MTU_BYTES = 1500
HEADER_BYTES = 52  # IPv4 20 + TCP 20 + timestamps 12
MSS_BYTES = MTU_BYTES - HEADER_BYTES
IP_FACTOR = MTU_BYTES / MSS_BYTES
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_EDGE_ADDRESS = "10.202.0.1"
_SERVER_ADDRESS = "10.202.0.2"
_DEVICES = {"up": "t0", "down": "t1"}  # the TUN a direction's packets are read from
# Packets due this close to a wake-up leave with it: ≤ 0.5 ms early, and only when packets follow
# each other that closely (above ~24 Mbit/s); a lone packet (a ping) leaves on time.
_BATCH_S = 0.0005
# Reads per TUN per wake-up, so that one busy direction cannot hold up the other's deadlines.
_READ_BATCH = 64
_READ_BYTES = 65536


class TunUnavailableError(SplitInferError):
    """This machine or process cannot run the tun backend; the message says why."""


@functools.lru_cache(maxsize=1)
def tun_unavailable_reason() -> str | None:
    """Why the tun backend cannot run here, or None when it can (probed once per process)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the tun backend needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "the tun backend needs `ip` (iproute2), which is not installed"
    probe = f"netemu-{os.getpid()}-tunprobe"
    try:
        run("ip", "netns", "add", probe)
        try:
            os.close(in_namespace(probe, functools.partial(_open_tun, "p0")))
        finally:
            remove_namespaces([probe])
    except (OSError, SplitInferError) as err:
        return f"the tun backend cannot run here: a TUN device in a network namespace failed: {err}"
    return None


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


class TunLink:
    """An emulated packet link; the same interface as `LinkEmulator` and `KernelLink`, plus loss:

        with TunLink("127.0.0.1:50051", uplink=Shape(rate_bps=5.85e6, delay_ms=20, loss=0.01)) as link:
            ... connect to link.address ...
            link.set_uplink(rate_bps=1e6)
            link.stats("up").dropped_loss
    """

    backend = "tun"

    def __init__(
        self,
        target: str,
        uplink: Shape | None = None,
        downlink: Shape | None = None,
        *,
        listen: str = "127.0.0.1:0",
        seed: int = 0,
    ) -> None:
        reason = tun_unavailable_reason()
        if reason is not None:
            raise TunUnavailableError(reason)
        self.target = target
        target_host, target_port = parse_address(target)
        self._listen = parse_address(listen, any_port=True)
        tag = new_tag()
        self.namespaces = {"up": f"{tag}-edge", "down": f"{tag}-server"}
        self._fds: dict[str, int] = {}
        self._forwarder: _Forwarder | None = None
        self._thread: LoopThread | None = None
        self._relays: list[ShapedRelay] = []
        self._closed = False
        self._close_lock = threading.Lock()
        remove_stale_namespaces()
        atexit.register(self.close)
        try:
            self._build()
            self._forwarder = _Forwarder(
                {"up": (self._fds["up"], self._fds["down"]), "down": (self._fds["down"], self._fds["up"])},
                {"up": uplink or Shape(), "down": downlink or Shape()},
                seed,
            )
            self._start_relays(target_host, target_port)
        except BaseException:
            self.close()
            raise

    # -- public -----------------------------------------------------------------------------------

    @property
    def uplink(self) -> Shape:
        return self._state.shape("up")

    @property
    def downlink(self) -> Shape:
        return self._state.shape("down")

    def set_uplink(self, **changes: object) -> Shape:
        """Changes the uplink's Shape fields (rate_bps, delay_ms, jitter_ms, queue_bytes, trace, loss)."""
        return self._set("up", changes)

    def set_downlink(self, **changes: object) -> Shape:
        return self._set("down", changes)

    def rate_bps_now(self, direction: str = "up", window_s: float = 1.0) -> float | None:
        """The payload rate the link offers now; with a trace, a bulk transfer's share (1448/1500)
        of the trace's mean over the next window_s. None: unlimited."""
        shape = self._state.shape(_direction(direction))
        origin = self.trace_origin_s(direction)
        if shape.trace is not None and origin is not None:
            return shape.trace.rate_bps_at(time.monotonic() - origin, window_s) / IP_FACTOR
        return shape.rate_bps

    def trace_origin_s(self, direction: str = "up") -> float | None:
        """`time.monotonic()` when the direction's trace started (its time 0); None without one."""
        return self._state.trace_origin(_direction(direction))

    def serialization_ms(self, payload_bytes: int, direction: str = "up") -> float:
        """Time this idle direction takes to carry payload_bytes in full-size packets at its rate,
        as the forwarder does it: each packet's IP and TCP headers count."""
        rate = self.rate_bps_now(direction)
        if rate is None or rate <= 0:
            return 0.0
        packet_bytes = payload_bytes + max(1, math.ceil(payload_bytes / MSS_BYTES)) * HEADER_BYTES
        return packet_bytes * 8 / (rate * IP_FACTOR) * 1e3

    def stats(self, direction: str = "up") -> DirectionStats:
        """The forwarder's counters for the direction: packets read, dropped, forwarded."""
        return self._state.stats(_direction(direction))

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Waits until the relays and the forwarder hold nothing; False on timeout."""
        forwarder = self._running()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(relay.idle for relay in self._relays) and forwarder.idle:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Stops the relays and the forwarder, closes the TUNs and removes the namespaces."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            stop_relays(self._thread, self._relays)
            if self._forwarder is not None:
                self._forwarder.stop()
        finally:
            for fd in self._fds.values():
                os.close(fd)
            remove_namespaces(self.namespaces.values())
            atexit.unregister(self.close)

    def __enter__(self) -> TunLink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------------

    def _build(self) -> None:
        ends = (("up", _EDGE_ADDRESS, _SERVER_ADDRESS), ("down", _SERVER_ADDRESS, _EDGE_ADDRESS))
        for direction, local, peer in ends:
            namespace, device = self.namespaces[direction], _DEVICES[direction]
            run("ip", "netns", "add", namespace)
            self._fds[direction] = in_namespace(namespace, functools.partial(_open_tun, device))
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            # No IPv6 link-local address: nothing but the link's own traffic crosses the forwarder.
            run("ip", "-n", namespace, "link", "set", device, "addrgenmode", "none")
            run("ip", "-n", namespace, "link", "set", device, "up")
            run("ip", "-n", namespace, "addr", "add", local, "peer", peer, "dev", device)

    def _start_relays(self, target_host: str, target_port: int) -> None:
        self._thread = LoopThread(f"netemu-tun-{self.namespaces['up']}")
        # Both relays only relay: the forwarder between the namespaces is the link.
        _, self.address = relay_across(self._thread, self._relays, self._listen, self.namespaces, _SERVER_ADDRESS, (target_host, target_port))

    def _set(self, direction: str, changes: dict[str, object]) -> Shape:
        forwarder = self._running()
        shape = shape_with(forwarder.shape(_direction(direction)), changes)
        forwarder.apply(direction, shape)
        return shape

    def _running(self) -> _Forwarder:
        if self._closed or self._forwarder is None:
            raise SplitInferError(f"the tun link {getattr(self, 'address', '?')} → {self.target} is closed")
        return self._forwarder

    @property
    def _state(self) -> _Forwarder:
        assert self._forwarder is not None, "set in __init__, which raised otherwise"
        return self._forwarder


class _Direction:
    """One direction of the forwarder: loss → queue → bottleneck → delay line (module's doc).
    Times are `time.monotonic()`; only the forwarder's thread calls it, under its lock.

    The bottleneck keeps `_credit`, IP bytes it may still send. A fixed rate accrues it from
    `_mark` on; a trace adds `packet_bytes` per opportunity, counted by index (not by time) so that
    no opportunity is used twice. Either way the queue's head leaves at the instant its capacity
    is complete."""

    def __init__(self, shape: Shape, rng: random.Random, out_fd: int, now: float) -> None:
        self._rng = rng
        self._out_fd = out_fd
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.in_flight: deque[tuple[float, bytes]] = deque()
        self._credit = 0.0
        self._mark = now
        self._next_opportunity = 0
        self._last_release = 0.0
        self.next_departure = math.inf
        self.counts = {"packets": 0, "dropped_loss": 0, "dropped_queue": 0, "forwarded": 0, "forwarded_bytes": 0}
        self.shape = shape
        self.apply(shape, now)

    def apply(self, shape: Shape, now: float) -> None:
        """A new shape from `now` on; capacity accrued so far at the old one is kept."""
        if self.queue:
            self._accrue(now)
        self.shape = shape
        self.trace_origin = now if shape.trace is not None else None
        self._next_opportunity = 0
        self._mark = now
        self._ip_bytes_per_s = shape.rate_bps * IP_FACTOR / 8 if shape.rate_bps is not None else None
        self._limit_bytes = max(MTU_BYTES, math.ceil(shape.queue_bytes * IP_FACTOR))

    @property
    def idle(self) -> bool:
        return not self.queue and not self.in_flight

    @property
    def next_event(self) -> float:
        return min(self.next_departure, self.in_flight[0][0] if self.in_flight else math.inf)

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
            # The link was idle: capacity starts accruing now, none was banked meanwhile.
            self._credit = 0.0
            self._mark = max(self._mark, now)
            if self.shape.trace is not None and self.trace_origin is not None:
                passed = self.shape.trace.count_until(now - self.trace_origin)
                self._next_opportunity = max(self._next_opportunity, passed)
        self.queue.append(packet)
        self.queued_bytes += len(packet)

    def transmit(self, now: float) -> None:
        """Sends every packet whose capacity is complete by `now` (+ the batch window)."""
        while self.queue:
            size = len(self.queue[0])
            while self._credit < size and self.shape.shaped:
                due = self._due(size)
                if due > now + _BATCH_S:
                    self.next_departure = due
                    return
                self._take(size, due)
            self._credit -= size
            self.queued_bytes -= size
            self._delay(self.queue.popleft(), self._mark if self.shape.shaped else now)
        self._credit = 0.0  # an idle link banks no capacity
        self.next_departure = math.inf

    def release(self, now: float) -> None:
        while self.in_flight and self.in_flight[0][0] <= now + _BATCH_S:
            packet = self.in_flight.popleft()[1]
            os.write(self._out_fd, packet)
            self.counts["forwarded"] += 1
            self.counts["forwarded_bytes"] += len(packet)

    def _due(self, size: int) -> float:
        """When the head of the queue (`size` bytes) or, with a trace, the next opportunity has
        its capacity."""
        if self._ip_bytes_per_s is not None:
            return self._mark + (size - self._credit) / self._ip_bytes_per_s
        assert self.shape.trace is not None and self.trace_origin is not None
        return self.trace_origin + self.shape.trace.opportunity_s(self._next_opportunity)

    def _take(self, size: int, due: float) -> None:
        """Adds the capacity that is complete at `due` (from `_due`)."""
        if self._ip_bytes_per_s is not None:
            self._credit = float(size)
        else:
            assert self.shape.trace is not None
            self._credit += self.shape.trace.packet_bytes
            self._next_opportunity += 1
        self._mark = due

    def _accrue(self, now: float) -> None:
        """Capacity up to `now` at the current shape (before it changes, with packets queued)."""
        if self._ip_bytes_per_s is not None:
            self._credit += max(0.0, now - self._mark) * self._ip_bytes_per_s
        elif self.shape.trace is not None and self.trace_origin is not None:
            reached = self.shape.trace.count_until(now - self.trace_origin)
            self._credit += max(0, reached - self._next_opportunity) * self.shape.trace.packet_bytes
        self._mark = now

    def _delay(self, packet: bytes, departed: float) -> None:
        delay_ms = self.shape.delay_ms
        if self.shape.jitter_ms:
            delay_ms = max(0.0, delay_ms + self._rng.uniform(-self.shape.jitter_ms, self.shape.jitter_ms))
        # Never before an earlier packet: the link does not reorder.
        self._last_release = max(departed + delay_ms / 1e3, self._last_release)
        self.in_flight.append((self._last_release, packet))


class _Forwarder:
    """The thread that carries packets between the two TUNs (see the module's doc)."""

    def __init__(self, fds: dict[str, tuple[int, int]], shapes: dict[str, Shape], seed: int) -> None:
        now = time.monotonic()
        self._lock = threading.Lock()
        # One seeded generator per direction: a run's losses and jitter can be replayed.
        self._directions = {
            name: _Direction(shapes[name], random.Random(f"{seed}-{name}"), fds[name][1], now) for name in DIRECTIONS
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

    def _read(self, fd: int, direction: _Direction) -> None:
        now = time.monotonic()
        # Departures first, so that a packet finds the queue as it is now.
        direction.transmit(now)
        for _ in range(_READ_BATCH):
            try:
                packet = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                return
            direction.arrive(packet, now)


def _open_tun(name: str) -> int:
    """A TUN device `name` in the calling thread's namespace: IP packets, no packet-info header;
    it lives as long as the returned file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise SplitInferError(f"direction {direction!r} is not one of {DIRECTIONS}")
    return direction
