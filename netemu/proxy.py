"""The user-space link: an asyncio TCP proxy that carries real bytes in real time between a listening
port and a target, through one emulated bottleneck per direction.

A direction (`_Bottleneck`) is shared by every connection through the proxy, like a real link:
1. **Queue.** Bytes read from senders wait in one FIFO queue of at most `Shape.queue_bytes`. When
   it is full the proxy stops reading from the senders' sockets, so TCP flow control pushes back
   on them: their bytes wait in the kernel's socket buffers (sender side, per connection, as in a
   sender's kernel on a real path) and nothing is ever dropped. A full queue delays every
   connection behind it (bufferbloat); the socket buffers delay only their own.
2. **Transmitter.** Drains the queue at the shape's rate: capacity accrues while the queue is not
   empty (a fixed payload bit rate, or 1500 bytes per delivery opportunity of a trace) and is lost
   while it is empty, as on a work-conserving link. Bytes leave in chunks of ~2 ms of capacity (at
   least one 1500-byte packet); a chunk leaves when the capacity for it has accrued, so a new rate
   applies at once to every byte still queued, including a partly sent chunk.
3. **Delay line.** Each departed chunk is held for the one-way delay ± jitter, never overtaking an
   earlier chunk (release times never decrease), then written to its receiver. A receiver that
   stops reading stops its own sender (its released bytes are capped per connection), and at most
   4 MiB are in flight per direction.

What it does not emulate: TCP ends at the proxy on both sides (split TCP), so the endpoints' own
congestion control sees loopback, not the emulated RTT: connection setup, slow start across the
RTT, loss and retransmission are not emulated; the rate is the payload rate (no header bytes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from netemu.eventloop import LoopThread
from netemu.shape import Shape, refuse_loss
from netemu.traces import PACKET_BYTES, RateTrace
from protos.errors import SplitInferError

log = logging.getLogger(__name__)

DIRECTIONS = ("up", "down")
# Largest single read from a sender.
_READ_BYTES = 256 * 1024
# Per connection and direction: bytes the delay line released that the receiver has not taken yet.
# Beyond this the sender is not read any more (the receiver's backpressure reaches the sender).
_OUT_HIGH_BYTES = 256 * 1024
# Per direction: bytes held in the delay line (in flight). It bounds memory and the backlog an
# unlimited link (the kernel backend's delay stage) can build; a rate-limited link reaches it only
# above 4 MiB / delay (335 Mbit/s at 100 ms).
_MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024
# The transmitter's granularity: ~500 wake-ups per second at any rate.
_CHUNK_S = 0.002
# A timer costs a loop iteration and fires ~0.1 ms late; capacity due sooner than this is taken
# now, and a chunk due out of the delay line sooner than this is released now. Both keep the rate
# exact (capacity is accounted to the instant it accrues) and centre the delay on its setting.
_EARLY_S = 0.0001
_CONNECT_TIMEOUT_S = 10.0

Connector = Callable[[], Awaitable[socket.socket]]


class _Wakeup:
    """Coroutines wait until notified or until a deadline (loop time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, deadline: float | None = None) -> None:
        future = self._loop.create_future()
        self._waiters.add(future)
        timer = self._loop.call_at(deadline, _resolve, future) if deadline is not None else None
        try:
            await future
        finally:
            self._waiters.discard(future)
            if timer is not None:
                timer.cancel()

    def notify(self) -> None:
        for future in self._waiters:
            _resolve(future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Capacity(Protocol):
    """What a direction may carry: bytes in (t0, t1], and when the next `nbytes` will have accrued."""

    quantum_bytes: float

    def bytes_between(self, t0: float, t1: float) -> float: ...

    def time_for(self, t0: float, nbytes: float) -> float: ...


class _Unlimited:
    quantum_bytes = math.inf

    def bytes_between(self, t0: float, t1: float) -> float:
        return math.inf

    def time_for(self, t0: float, nbytes: float) -> float:
        return t0


class _FixedRate:
    def __init__(self, rate_bps: float) -> None:
        self.bytes_per_s = rate_bps / 8
        self.quantum_bytes = max(PACKET_BYTES, self.bytes_per_s * _CHUNK_S)

    def bytes_between(self, t0: float, t1: float) -> float:
        return max(0.0, t1 - t0) * self.bytes_per_s

    def time_for(self, t0: float, nbytes: float) -> float:
        return t0 + nbytes / self.bytes_per_s


class _TraceRate:
    """A trace replayed from loop time `origin` on."""

    def __init__(self, trace: RateTrace, origin: float) -> None:
        self.trace = trace
        self.origin = origin
        packets = math.ceil(trace.mean_rate_bps / 8 * _CHUNK_S / trace.packet_bytes)
        self.quantum_bytes = max(1, packets) * trace.packet_bytes

    def bytes_between(self, t0: float, t1: float) -> float:
        return self.trace.bytes_between(t0 - self.origin, t1 - self.origin)

    def time_for(self, t0: float, nbytes: float) -> float:
        packets = max(1, math.ceil(nbytes / self.trace.packet_bytes))
        return self.origin + self.trace.next_opportunity_s(t0 - self.origin, packets)


def _capacity(shape: Shape, now: float) -> _Capacity:
    if shape.trace is not None:
        return _TraceRate(shape.trace, now)
    if shape.rate_bps is not None:
        return _FixedRate(shape.rate_bps)
    return _Unlimited()


class _Flow:
    """One direction of one proxied connection: bytes read from `src` are written to `dst`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.out: deque[memoryview | None] = deque()  # released by the delay line, not yet written
        self.out_bytes = 0
        self.out_ready = _Wakeup(loop)
        self.dead = False

    def push(self, pieces: list[memoryview] | None) -> None:
        if self.dead:
            return
        if pieces is None:
            self.out.append(None)
        else:
            self.out.extend(pieces)
            self.out_bytes += sum(len(p) for p in pieces)
        self.out_ready.notify()


class _Bottleneck:
    """One direction of the link: queue → transmitter → delay line (see the module's doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shape: Shape, rng: random.Random) -> None:
        self._loop = loop
        self._rng = rng
        self.shape = shape
        self._capacity = _capacity(shape, loop.time())
        self.queue: deque[list] = deque()  # [flow, memoryview | None (end of stream)]
        self.queued_bytes = 0
        self.in_flight: deque[tuple[float, _Flow, list[memoryview] | None]] = deque()
        self.in_flight_bytes = 0
        self.delivered_bytes = 0
        # Readers wait on `changed` for queue space, delay-line space or their receiver to drain.
        self.changed = _Wakeup(loop)
        self._transmitter = _Wakeup(loop)
        self._delay_line = _Wakeup(loop)
        self._credit = 0.0  # bytes the link may still send, accrued up to `_mark`
        self._mark = loop.time()
        self._last_release = 0.0

    # -- called by the relay ------------------------------------------------------------------

    def apply(self, shape: Shape) -> None:
        """A new shape from now on; capacity accrued so far at the old rate is kept."""
        now = self._loop.time()
        if self.queue:
            self._accrue(now)
        if math.isinf(self._credit):
            self._credit = 0.0
        self.shape = shape
        self._capacity = _capacity(shape, now)
        self._transmitter.notify()
        self.changed.notify()

    @property
    def trace_origin(self) -> float | None:
        return self._capacity.origin if isinstance(self._capacity, _TraceRate) else None

    def room(self) -> int:
        """Bytes a sender may add now."""
        return max(0, min(self.shape.queue_bytes - self.queued_bytes, _MAX_IN_FLIGHT_BYTES - self.in_flight_bytes))

    def enqueue(self, flow: _Flow, data: bytes | None) -> None:
        if not self.queue:
            # The link was idle: capacity starts accruing now, none was banked meanwhile (the
            # mark can be a hair ahead of the clock when the last chunk was taken early).
            self._mark = max(self._mark, self._loop.time())
            self._credit = 0.0
            self._transmitter.notify()
        self.queue.append([flow, memoryview(data) if data is not None else None])
        self.queued_bytes += len(data) if data is not None else 0

    def purge(self, flow: _Flow) -> None:
        """Forgets a closed connection's bytes: they would only hold up the others."""
        kept = deque(item for item in self.queue if item[0] is not flow)
        self.queued_bytes = sum(len(item[1]) for item in kept if item[1] is not None)
        self.queue = kept
        self.in_flight = deque(entry for entry in self.in_flight if entry[1] is not flow)
        self.in_flight_bytes = sum(sum(len(p) for p in entry[2]) for entry in self.in_flight if entry[2] is not None)
        self.changed.notify()

    @property
    def idle(self) -> bool:
        return not self.queue and not self.in_flight

    # -- the two tasks of a direction ---------------------------------------------------------

    async def transmit(self) -> None:
        while True:
            if not self.queue:
                await self._transmitter.wait()
                continue
            now = self._loop.time()
            self._accrue(now)
            self._depart(now)
            if not self.queue:
                self._credit = 0.0  # an idle link banks no capacity
                continue
            need = min(self.queued_bytes, self._capacity.quantum_bytes) - self._credit
            due = self._capacity.time_for(self._mark, need)
            if due - self._loop.time() <= _EARLY_S:
                # Take the capacity now, accounted to when it accrues: `_mark` moves ahead of the
                # clock and the next accrual starts there.
                self._credit += self._capacity.bytes_between(self._mark, due)
                self._mark = due
                self._depart(due)
                if not self.queue:
                    self._credit = 0.0
                continue
            await self._transmitter.wait(due)

    async def deliver(self) -> None:
        while True:
            if not self.in_flight:
                await self._delay_line.wait()
                continue
            now = self._loop.time()
            released = False
            while self.in_flight and self.in_flight[0][0] <= now + _EARLY_S:
                _, flow, pieces = self.in_flight.popleft()
                if pieces is not None:
                    self.in_flight_bytes -= sum(len(p) for p in pieces)
                flow.push(pieces)
                released = True
            if released:
                self.changed.notify()
            if self.in_flight:
                await self._delay_line.wait(self.in_flight[0][0] - _EARLY_S)

    # -- internals ----------------------------------------------------------------------------

    def _accrue(self, now: float) -> None:
        if now > self._mark:
            self._credit += self._capacity.bytes_between(self._mark, now)
            self._mark = now

    def _depart(self, now: float) -> None:
        """Sends what the accrued capacity covers, and any ends of streams that come next."""
        budget = self.queued_bytes if math.isinf(self._credit) else min(int(self._credit), self.queued_bytes)
        sent = 0
        batch: list[tuple[_Flow, list[memoryview] | None]] = []
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
            if batch and batch[-1][0] is flow and batch[-1][1] is not None:
                batch[-1][1].append(piece)
            else:
                batch.append((flow, [piece]))
        if not batch:
            return
        self.queued_bytes -= sent
        if not math.isinf(self._credit):
            self._credit -= sent
        release = self._release_time(now)
        for flow, pieces in batch:
            if release <= now + _EARLY_S and not self.in_flight:
                flow.push(pieces)
                continue
            if not self.in_flight:
                self._delay_line.notify()
            self.in_flight.append((release, flow, pieces))
            if pieces is not None:
                self.in_flight_bytes += sum(len(p) for p in pieces)
        self.changed.notify()

    def _release_time(self, departed: float) -> float:
        delay_ms = self.shape.delay_ms
        if self.shape.jitter_ms:
            delay_ms = max(0.0, delay_ms + self._rng.uniform(-self.shape.jitter_ms, self.shape.jitter_ms))
        # Never before an earlier chunk: a TCP stream must not be reordered.
        self._last_release = max(departed + delay_ms / 1e3, self._last_release)
        return self._last_release


class ShapedRelay:
    """The asyncio core: accepts on `listener`, opens a connection with `connect` for each client and
    carries both directions through their bottlenecks. Every method runs in the relay's loop."""

    def __init__(
        self, listener: socket.socket, connect: Connector, uplink: Shape, downlink: Shape, *, seed: int = 0
    ) -> None:
        self.listener = listener
        self._connect = connect
        self._shapes = {"up": uplink, "down": downlink}
        self._seed = seed
        self.bottlenecks: dict[str, _Bottleneck] = {}
        self._tasks: set[asyncio.Task] = set()
        self._connections: set[asyncio.Task] = set()
        self.connections_accepted = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # One seeded generator per direction: the jitter of a run can be replayed.
        self.bottlenecks = {
            name: _Bottleneck(loop, self._shapes[name], random.Random(f"{self._seed}-{name}")) for name in DIRECTIONS
        }
        self.listener.setblocking(False)
        for bottleneck in self.bottlenecks.values():
            self._spawn(bottleneck.transmit(), self._tasks)
            self._spawn(bottleneck.deliver(), self._tasks)
        self._spawn(self._accept(), self._tasks)
        for task in self._tasks:
            # These run for the link's life: one that ends early has stopped the link; say so.
            task.add_done_callback(_report_failure)

    def apply(self, direction: str, shape: Shape) -> None:
        self.bottlenecks[direction].apply(shape)

    @property
    def idle(self) -> bool:
        return all(b.idle for b in self.bottlenecks.values())

    async def close(self) -> None:
        tasks = [*self._tasks, *self._connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listener.close()

    def _spawn(self, coroutine: Awaitable[None], into: set[asyncio.Task]) -> None:
        task = asyncio.ensure_future(coroutine)
        into.add(task)
        task.add_done_callback(into.discard)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.listener)
            self.connections_accepted += 1
            self._spawn(self._relay(client), self._connections)

    async def _relay(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await asyncio.wait_for(self._connect(), _CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as err:
            log.warning("netemu: cannot reach the target, closing the client's connection: %r", err)
            _abort(client)
            return
        for sock in (client, server):
            sock.setblocking(False)
            # Small writes (a ping, a short reply) must leave at once, not wait for Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flows = {"up": _Flow(loop, client, server), "down": _Flow(loop, server, client)}
        tasks = []
        for name, flow in flows.items():
            bottleneck = self.bottlenecks[name]
            tasks.append(asyncio.ensure_future(self._read(flow, bottleneck)))
            tasks.append(asyncio.ensure_future(self._write(flow, bottleneck)))
        clean = False
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            clean = all(not t.cancelled() and t.exception() is None for t in done) and len(done) == len(tasks)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.debug("netemu: connection ended: %r", task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for name, flow in flows.items():
                flow.dead = True
                self.bottlenecks[name].purge(flow)
            for sock in (client, server):
                sock.close() if clean else _abort(sock)

    async def _read(self, flow: _Flow, bottleneck: _Bottleneck) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await _readable(loop, flow.src)
            while bottleneck.room() <= 0 or flow.out_bytes >= _OUT_HIGH_BYTES:
                await bottleneck.changed.wait()
            # No await between the room check and the read: the queue limit holds exactly.
            try:
                data = flow.src.recv(min(bottleneck.room(), _READ_BYTES))
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                bottleneck.enqueue(flow, None)
                return
            bottleneck.enqueue(flow, data)

    async def _write(self, flow: _Flow, bottleneck: _Bottleneck) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not flow.out:
                await flow.out_ready.wait()
                continue
            batch: list[memoryview] = []
            size = 0
            end = False
            while flow.out and size < _READ_BYTES:
                piece = flow.out.popleft()
                if piece is None:
                    end = True
                    break
                batch.append(piece)
                size += len(piece)
            if batch:
                await loop.sock_sendall(flow.dst, b"".join(batch))
                flow.out_bytes -= size
                bottleneck.delivered_bytes += size
                bottleneck.changed.notify()
            if end:
                flow.dst.shutdown(socket.SHUT_WR)
                return


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("netemu: a link task failed, the link no longer carries bytes", exc_info=task.exception())


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future = loop.create_future()
    loop.add_reader(sock.fileno(), _resolve, future)
    try:
        await future
    finally:
        loop.remove_reader(sock.fileno())


def _abort(sock: socket.socket) -> None:
    """Closes with a reset, so the peer learns the connection failed rather than ended."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def parse_address(address: str, *, any_port: bool = False) -> tuple[str, int]:
    """"host:port" or "[v6]:port" → (host, port); port 0 (any free port) only when `any_port`."""
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise SplitInferError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_connector(host: str, port: int) -> Connector:
    """Opens a TCP connection to host:port from the relay's loop."""

    async def connect() -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def shape_with(shape: Shape, changes: dict[str, object]) -> Shape:
    """`shape` with some fields changed; a rate replaces a trace and a trace a rate."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Shape)})
    if unknown:
        raise SplitInferError(f"unknown link settings {unknown}; known: {[f.name for f in dataclasses.fields(Shape)]}")
    if changes.get("rate_bps") is not None and "trace" not in changes:
        changes = {**changes, "trace": None}
    if changes.get("trace") is not None and "rate_bps" not in changes:
        changes = {**changes, "rate_bps": None}
    return dataclasses.replace(shape, **changes)


class LinkEmulator:
    """An emulated link in a background thread, for sync code:

        with LinkEmulator("127.0.0.1:50051", uplink=Shape(rate_bps=5.85e6, delay_ms=20)) as link:
            client = EdgeClient(bundle, link.address)
            link.set_uplink(rate_bps=1e6)   # takes effect at once, for bytes already queued too

    `listen` is where clients connect ("127.0.0.1:0": a free loopback port; `address` tells which).
    `seed` seeds the jitter. The emulator shares its process's GIL: heavy Python work in other
    threads of the same process delays its timers.
    """

    backend = "user"

    def __init__(
        self,
        target: str,
        uplink: Shape | None = None,
        downlink: Shape | None = None,
        *,
        listen: str = "127.0.0.1:0",
        seed: int = 0,
    ) -> None:
        self.target = target
        target_host, target_port = parse_address(target)
        uplink, downlink = refuse_loss(uplink or Shape(), self.backend), refuse_loss(downlink or Shape(), self.backend)
        listener = listen_socket(*parse_address(listen, any_port=True))
        self._thread = LoopThread(f"netemu-{listener.getsockname()[1]}")
        self._relay = ShapedRelay(listener, tcp_connector(target_host, target_port), uplink, downlink, seed=seed)
        try:
            self._thread.call(self._relay.start)
        except BaseException:
            self._thread.stop()
            listener.close()
            raise
        host, port = listener.getsockname()[:2]
        self.address = format_address(host, port)

    @property
    def uplink(self) -> Shape:
        return self._relay.bottlenecks["up"].shape

    @property
    def downlink(self) -> Shape:
        return self._relay.bottlenecks["down"].shape

    def set_uplink(self, **changes: object) -> Shape:
        """Changes the uplink's Shape fields (rate_bps, delay_ms, jitter_ms, queue_bytes, trace; not loss)."""
        return self._set("up", changes)

    def set_downlink(self, **changes: object) -> Shape:
        return self._set("down", changes)

    def _set(self, direction: str, changes: dict[str, object]) -> Shape:
        if self._thread.loop.is_closed():
            raise SplitInferError(f"the link {self.address} → {self.target} is closed")
        shape = refuse_loss(shape_with(self._relay.bottlenecks[direction].shape, changes), self.backend)

        async def apply() -> None:
            self._relay.apply(direction, shape)

        self._thread.call(apply)
        return shape

    def rate_bps_now(self, direction: str = "up", window_s: float = 1.0) -> float | None:
        """The rate the link offers now (a trace's mean over the next window_s); None: unlimited."""
        bottleneck = self._relay.bottlenecks[_direction(direction)]
        shape = bottleneck.shape
        if shape.trace is not None and bottleneck.trace_origin is not None:
            return shape.trace.rate_bps_at(self._thread.loop.time() - bottleneck.trace_origin, window_s)
        return shape.rate_bps

    def trace_origin_s(self, direction: str = "up") -> float | None:
        """`time.monotonic()` when the direction's trace started (its time 0); None without one."""
        return self._relay.bottlenecks[_direction(direction)].trace_origin

    def serialization_ms(self, payload_bytes: int, direction: str = "up") -> float:
        """Time this direction takes to carry payload_bytes at its current rate."""
        rate = self.rate_bps_now(direction)
        return 0.0 if rate is None or rate <= 0 else payload_bytes * 8 / rate * 1e3

    def delivered_bytes(self, direction: str = "up") -> int:
        return self._relay.bottlenecks[_direction(direction)].delivered_bytes

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Waits until nothing is queued or in flight in either direction; False on timeout."""

        async def idle() -> bool:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while not self._relay.idle:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.005)
            return True

        return self._thread.call(idle, timeout_s + 5.0)

    def close(self) -> None:
        if self._thread.loop.is_closed():
            return
        try:
            self._thread.call(self._relay.close)
        finally:
            self._thread.stop()

    def __enter__(self) -> LinkEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise SplitInferError(f"direction {direction!r} is not one of {DIRECTIONS}")
    return direction


def listen_socket(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=128)
    except OSError as err:
        raise SplitInferError(f"cannot listen on {format_address(host, port)}: {err.strerror}") from err
