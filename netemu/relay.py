"""The TCP relay every backend puts in front of its link: it accepts clients on a listening
socket, opens a connection to the target for each (with a `Connector`, so that a backend can
connect from inside a network namespace) and carries both directions through one shared
`StreamDirection` each (netemu/streams.py). The user backend shapes the whole link here; the
kernel backend only its delay and jitter; the tun backend's relays shape nothing. TCP ends at the
relay on both sides (split TCP), so the endpoints' own congestion control sees loopback, not the
emulated RTT. Every method of `ShapedRelay` runs in the relay's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable

from netemu.shape import DIRECTIONS, Shape
from netemu.streams import Flow, StreamDirection, resolve

log = logging.getLogger(__name__)

# Largest single read from a sender, and largest single write to a receiver.
_READ_BYTES = 256 * 1024
# Per connection and direction: bytes the delay line released that the receiver has not taken yet.
# Beyond this the sender is not read any more (the receiver's backpressure reaches the sender).
_OUT_HIGH_BYTES = 256 * 1024
_CONNECT_TIMEOUT_S = 10.0

Connector = Callable[[], Awaitable[socket.socket]]


class ShapedRelay:
    """Accepts on `listener`, opens a connection with `connect` for each client and carries both
    directions through their `StreamDirection`s."""

    def __init__(
        self, listener: socket.socket, connect: Connector, uplink: Shape, downlink: Shape, *, seed: int = 0
    ) -> None:
        self.listener = listener
        self._connect = connect
        self._shapes = {"up": uplink, "down": downlink}
        self._seed = seed
        self.directions: dict[str, StreamDirection] = {}
        self._tasks: set[asyncio.Task] = set()
        self._connections: set[asyncio.Task] = set()
        self.connections_accepted = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # One seeded generator per direction: the jitter of a run can be replayed.
        self.directions = {
            name: StreamDirection(loop, self._shapes[name], random.Random(f"{self._seed}-{name}"))
            for name in DIRECTIONS
        }
        self.listener.setblocking(False)
        for direction in self.directions.values():
            self._spawn(direction.transmit(), self._tasks)
            self._spawn(direction.deliver(), self._tasks)
        self._spawn(self._accept(), self._tasks)
        for task in self._tasks:
            # These run for the link's life: one that ends early has stopped the link; say so.
            task.add_done_callback(_report_failure)

    def apply(self, direction: str, shape: Shape) -> None:
        self.directions[direction].apply(shape)

    @property
    def idle(self) -> bool:
        return all(d.idle for d in self.directions.values())

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
        flows = {"up": Flow(loop, client, server), "down": Flow(loop, server, client)}
        tasks = []
        for name, flow in flows.items():
            direction = self.directions[name]
            tasks.append(asyncio.ensure_future(self._read(flow, direction)))
            tasks.append(asyncio.ensure_future(self._write(flow, direction)))
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
                self.directions[name].purge(flow)
            for sock in (client, server):
                sock.close() if clean else _abort(sock)

    async def _read(self, flow: Flow, direction: StreamDirection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await _readable(loop, flow.src)
            while direction.room() <= 0 or flow.out_bytes >= _OUT_HIGH_BYTES:
                await direction.changed.wait()
            # No await between the room check and the read: the queue limit holds exactly.
            try:
                data = flow.src.recv(min(direction.room(), _READ_BYTES))
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                direction.enqueue(flow, None)
                return
            direction.enqueue(flow, data)

    async def _write(self, flow: Flow, direction: StreamDirection) -> None:
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
                direction.delivered_bytes += size
                direction.changed.notify()
            if end:
                flow.dst.shutdown(socket.SHUT_WR)
                return


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


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("netemu: a link task failed, the link no longer carries bytes", exc_info=task.exception())


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future = loop.create_future()
    loop.add_reader(sock.fileno(), resolve, future)
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
