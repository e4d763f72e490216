"""The user backend: the whole link emulated by one asyncio TCP relay (netemu/relay.py) in a
background thread, carrying real bytes in real time between a listening port and a target
through one shared queue, transmitter and delay line per direction (netemu/streams.py). No
privileges, any machine. What it does not emulate: TCP ends at the relay on both sides (split
TCP), so the endpoints' own congestion control sees loopback, not the emulated RTT: connection
setup, slow start across the RTT, loss and retransmission are not emulated; the rate is the
payload rate (no header bytes). A Shape with loss is refused (the tun backend emulates it).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from netemu.addresses import format_address, listen_socket, parse_address
from netemu.eventloop import LoopThread
from netemu.relay import ShapedRelay, tcp_connector
from netemu.shape import Shape, check_direction, refuse_loss, shape_with
from protos.errors import SplitInferError


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
        return self._relay.directions["up"].shape

    @property
    def downlink(self) -> Shape:
        return self._relay.directions["down"].shape

    def set_uplink(self, **changes: object) -> Shape:
        """Changes the uplink's Shape fields (rate_bps, delay_ms, jitter_ms, queue_bytes, trace; not loss)."""
        return self._set("up", changes)

    def set_downlink(self, **changes: object) -> Shape:
        return self._set("down", changes)

    def _set(self, direction: str, changes: dict[str, object]) -> Shape:
        if self._thread.loop.is_closed():
            raise SplitInferError(f"the link {self.address} → {self.target} is closed")
        shape = refuse_loss(shape_with(self._relay.directions[direction].shape, changes), self.backend)

        async def apply() -> None:
            self._relay.apply(direction, shape)

        self._thread.call(apply)
        return shape

    def rate_bps_now(self, direction: str = "up", window_s: float = 1.0) -> float | None:
        """The rate the link offers now (a trace's mean over the next window_s); None: unlimited."""
        stream = self._relay.directions[check_direction(direction)]
        shape = stream.shape
        if shape.trace is not None and stream.trace_origin is not None:
            return shape.trace.rate_bps_at(self._thread.loop.time() - stream.trace_origin, window_s)
        return shape.rate_bps

    def trace_origin_s(self, direction: str = "up") -> float | None:
        """`time.monotonic()` when the direction's trace started (its time 0); None without one."""
        return self._relay.directions[check_direction(direction)].trace_origin

    def serialization_ms(self, payload_bytes: int, direction: str = "up") -> float:
        """Time this direction takes to carry payload_bytes at its current rate."""
        rate = self.rate_bps_now(direction)
        return 0.0 if rate is None or rate <= 0 else payload_bytes * 8 / rate * 1e3

    def delivered_bytes(self, direction: str = "up") -> int:
        return self._relay.directions[check_direction(direction)].delivered_bytes

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
