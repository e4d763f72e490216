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

The forwarder (netemu/backends/forwarder.py) is the link: loss, a drop-tail queue, the bottleneck
the user backend uses too (netemu/capacity.py), counting IP bytes, and the delay line.

Cleanup: the namespaces (netemu-<pid>-<n>-edge/-server, see netemu/namespaces.py) are removed on
close(), at exit, and by any later link that finds namespaces of a process that is gone.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import math
import os
import shutil
import struct
import threading
import time
from types import TracebackType

from netemu.addresses import parse_address
from netemu.backends.forwarder import (
    HEADER_BYTES,
    IP_FACTOR,
    MSS_BYTES,
    DirectionStats,
    Forwarder,
)
from netemu.eventloop import LoopThread
from netemu.namespaces import (
    in_namespace,
    new_tag,
    relay_across,
    remove_namespaces,
    remove_stale_namespaces,
    run,
    stop_relays,
)
from netemu.relay import ShapedRelay
from netemu.shape import Shape, check_direction, shape_with
from protos.errors import SplitInferError

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_EDGE_ADDRESS = "10.202.0.1"
_SERVER_ADDRESS = "10.202.0.2"
_DEVICES = {"up": "t0", "down": "t1"}  # the TUN a direction's packets are read from


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
        self._forwarder: Forwarder | None = None
        self._thread: LoopThread | None = None
        self._relays: list[ShapedRelay] = []
        self._closed = False
        self._close_lock = threading.Lock()
        remove_stale_namespaces()
        atexit.register(self.close)
        try:
            self._build()
            self._forwarder = Forwarder(
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
        shape = self._state.shape(check_direction(direction))
        origin = self.trace_origin_s(direction)
        if shape.trace is not None and origin is not None:
            return shape.trace.rate_bps_at(time.monotonic() - origin, window_s) / IP_FACTOR
        return shape.rate_bps

    def trace_origin_s(self, direction: str = "up") -> float | None:
        """`time.monotonic()` when the direction's trace started (its time 0); None without one."""
        return self._state.trace_origin(check_direction(direction))

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
        return self._state.stats(check_direction(direction))

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
        _, self.address = relay_across(
            self._thread, self._relays, self._listen, self.namespaces, _SERVER_ADDRESS, (target_host, target_port)
        )

    def _set(self, direction: str, changes: dict[str, object]) -> Shape:
        forwarder = self._running()
        shape = shape_with(forwarder.shape(check_direction(direction)), changes)
        forwarder.apply(direction, shape)
        return shape

    def _running(self) -> Forwarder:
        if self._closed or self._forwarder is None:
            raise SplitInferError(f"the tun link {getattr(self, 'address', '?')} → {self.target} is closed")
        return self._forwarder

    @property
    def _state(self) -> Forwarder:
        assert self._forwarder is not None, "set in __init__, which raised otherwise"
        return self._forwarder


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
