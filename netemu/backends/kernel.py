"""The kernel backend: the link's rate is shaped by Linux (htb on a veth pair between two network
namespaces), its delay and jitter by a user-space relay in front of it. Needs root.

Topology, all driven from this process:

    client → 127.0.0.1:P  relay "edge" (root namespace): delay ± jitter of each direction
           → a socket opened inside namespace E → veth e0 ══ veth s0 → a listener inside namespace S
           → relay "server" → a socket opened in the root namespace → target

htb on e0's egress shapes the uplink, on s0's egress the downlink. `tc class change` steps a rate
live; a trace is replayed by stepping the rate every `trace_step_s` (0.1 s) to the trace's mean
over that step. Under each htb class a bfifo of `queue_bytes` (wire bytes) is the bottleneck's
buffer: what overflows is dropped and TCP across the veth retransmits it.

Design choices, and why:
- Delay in user space. This kernel has no netem and none of the qdiscs built here can hold a
  packet for a time (fq with BPF timestamps is not built), so the edge relay adds the delay. It
  terminates TCP, so, as with the user backend, the endpoints' congestion control does not see the
  emulated RTT (no slow start across it). The tun backend (netemu/backends/tun.py) does.
- Payload rate. htb counts whole frames (Ethernet, IP and TCP headers: 66 bytes beside a 1448-byte
  segment), so its goodput is ~95.6% of its rate. `Shape.rate_bps` means the payload rate in both
  backends, so htb is set to rate_bps × 1514/1448; smaller packets pay a larger header share, as on
  a real link (`serialization_ms` accounts for it).
- No super-packets. The veths get `gso_max_segs 1` (iproute2), so the stack hands htb MTU-sized
  packets rather than 64 KB TSO/GSO bursts; `ethtool -K … tso off gso off` is applied too when
  ethtool is installed (it is optional).
- Loss is not emulated (a Shape with loss is refused): iptables is not installed on these machines,
  and loss on a veth with no delay on it would not cost what it costs on a real path. The tun
  backend drops packets where the delay is, so TCP pays a real round trip for each loss.
- Cleanup: namespaces are named netemu-<pid>-<n>-edge/-server, removed on close(), at exit, and by
  any later KernelLink that finds namespaces of a process that is gone. Removing a namespace
  removes its veth and qdiscs with it.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import re
import shutil
import subprocess
import threading
import time
from types import TracebackType

from netemu.addresses import parse_address
from netemu.eventloop import LoopThread
from netemu.namespaces import (
    new_tag,
    relay_across,
    remove_namespaces,
    remove_stale_namespaces,
    run,
    stop_relays,
)
from netemu.relay import ShapedRelay
from netemu.shape import DIRECTIONS, Shape, check_direction, refuse_loss, shape_with
from protos.errors import SplitInferError

MSS_BYTES = 1448
HEADER_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12
WIRE_FACTOR = (MSS_BYTES + HEADER_BYTES) / MSS_BYTES
_UNLIMITED_RATE_BPS = 10e9
# htb refuses a zero rate; a trace step without opportunities gets this (one byte per second).
_MIN_RATE_BPS = 8.0
_EDGE_ADDRESS = "10.201.0.1"
_SERVER_ADDRESS = "10.201.0.2"


class KernelUnavailableError(SplitInferError):
    """This machine or process cannot run the kernel backend; the message says why."""


@functools.lru_cache(maxsize=1)
def kernel_unavailable_reason() -> str | None:
    """Why the kernel backend cannot run here, or None when it can (probed once per process)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the kernel backend needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the kernel backend needs `{tool}` (iproute2), which is not installed"
    probe = f"netemu-{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        try:
            run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
            run("tc", "-n", probe, "qdisc", "add", "dev", "p0", "root", "handle", "1:", "htb")
        finally:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    except SplitInferError as err:
        return f"the kernel backend cannot run here: network namespaces with htb failed: {err}"
    return None


class KernelLink:
    """An emulated link shaped by the kernel; the same interface as `LinkEmulator`:

    with KernelLink("127.0.0.1:50051", uplink=Shape(rate_bps=5.85e6, delay_ms=20)) as link:
        ... connect to link.address ...
        link.set_uplink(rate_bps=1e6)
    """

    backend = "kernel"

    def __init__(
        self,
        target: str,
        uplink: Shape | None = None,
        downlink: Shape | None = None,
        *,
        listen: str = "127.0.0.1:0",
        seed: int = 0,
        trace_step_s: float = 0.1,
    ) -> None:
        reason = kernel_unavailable_reason()
        if reason is not None:
            raise KernelUnavailableError(reason)
        if not trace_step_s > 0:
            raise SplitInferError(f"trace_step_s must be positive, got {trace_step_s}")
        self.target = target
        target_host, target_port = parse_address(target)
        self._listen = parse_address(listen, any_port=True)
        self.trace_step_s = trace_step_s
        self._seed = seed
        tag = new_tag()
        self.namespaces = {"up": f"{tag}-edge", "down": f"{tag}-server"}
        self._devices = {"up": "e0", "down": "s0"}
        self._shapes = {
            "up": refuse_loss(uplink or Shape(), self.backend),
            "down": refuse_loss(downlink or Shape(), self.backend),
        }
        self._trace_started: dict[str, float] = {}
        self._replays: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._relays: list[ShapedRelay] = []
        self._closed = False
        remove_stale_namespaces()
        atexit.register(self.close)
        try:
            self._build()
            for direction in DIRECTIONS:
                self._apply_kernel(direction, None, self._shapes[direction])
            self._start_relays(target_host, target_port)
        except BaseException:
            self.close()
            raise

    # -- public -----------------------------------------------------------------------------------

    @property
    def uplink(self) -> Shape:
        return self._shapes["up"]

    @property
    def downlink(self) -> Shape:
        return self._shapes["down"]

    def set_uplink(self, **changes: object) -> Shape:
        return self._set("up", changes)

    def set_downlink(self, **changes: object) -> Shape:
        return self._set("down", changes)

    def rate_bps_now(self, direction: str = "up", window_s: float = 1.0) -> float | None:
        shape = self._shapes[check_direction(direction)]
        if shape.trace is not None:
            return shape.trace.rate_bps_at(time.monotonic() - self._trace_started[direction], window_s)
        return shape.rate_bps

    def trace_origin_s(self, direction: str = "up") -> float | None:
        """`time.monotonic()` when the direction's trace started (its time 0); None without one."""
        return self._trace_started.get(check_direction(direction)) if self._shapes[direction].trace else None

    def serialization_ms(self, payload_bytes: int, direction: str = "up") -> float:
        """Time this idle direction takes to carry payload_bytes (in full-size segments) at its
        rate, as htb does it: headers count, and the first `_burst_bytes` pass at once (a token
        bucket that has been idle is full)."""
        rate = self.rate_bps_now(direction)
        if rate is None:
            return 0.0
        wire_rate = rate * WIRE_FACTOR
        wire = payload_bytes + max(1, math.ceil(payload_bytes / MSS_BYTES)) * HEADER_BYTES
        return max(0, wire - _burst_bytes(wire_rate)) * 8 / wire_rate * 1e3

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Waits until the relays and both htb queues are empty; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(relay.idle for relay in self._relays) and all(
                self._backlog_bytes(direction) == 0 for direction in DIRECTIONS
            ):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Stops the relays and removes the namespaces (and with them the veth and qdiscs)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for thread, stop in self._replays.values():
            stop.set()
            thread.join(5.0)
        stop_relays(self._thread, self._relays)
        remove_namespaces(self.namespaces.values())
        atexit.unregister(self.close)

    def __enter__(self) -> KernelLink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- building ---------------------------------------------------------------------------------

    def _build(self) -> None:
        edge, server = self.namespaces["up"], self.namespaces["down"]
        run("ip", "netns", "add", edge)
        run("ip", "netns", "add", server)
        run("ip", "-n", edge, "link", "add", "e0", "type", "veth", "peer", "name", "s0", "netns", server)
        for namespace, device, address in ((edge, "e0", _EDGE_ADDRESS), (server, "s0", _SERVER_ADDRESS)):
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "-n", namespace, "addr", "add", f"{address}/30", "dev", device)
            # MTU-sized packets into htb, not 64 KB GSO super-packets.
            run("ip", "-n", namespace, "link", "set", device, "gso_max_segs", "1", "up")
            if shutil.which("ethtool"):
                subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        namespace,
                        "ethtool",
                        "-K",
                        device,
                        "tso",
                        "off",
                        "gso",
                        "off",
                        "gro",
                        "off",
                    ],
                    capture_output=True,
                    timeout=10,
                )
            run("tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "1")

    def _start_relays(self, target_host: str, target_port: int) -> None:
        self._thread = LoopThread(f"netemu-kernel-{self.namespaces['up']}")
        # The kernel shapes the rate; the edge relay adds the delay and jitter.
        self._edge_relay, self.address = relay_across(
            self._thread,
            self._relays,
            self._listen,
            self.namespaces,
            _SERVER_ADDRESS,
            (target_host, target_port),
            uplink=_delay_only(self._shapes["up"]),
            downlink=_delay_only(self._shapes["down"]),
            seed=self._seed,
        )

    # -- shaping ----------------------------------------------------------------------------------

    def _set(self, direction: str, changes: dict[str, object]) -> Shape:
        if self._closed:
            raise SplitInferError(f"the link {self.address} → {self.target} is closed")
        old = self._shapes[check_direction(direction)]
        shape = refuse_loss(shape_with(old, changes), self.backend)
        self._apply_kernel(direction, old, shape)
        self._shapes[direction] = shape

        async def apply() -> None:
            self._edge_relay.apply(direction, _delay_only(shape))

        assert self._thread is not None
        self._thread.call(apply)
        return shape

    def _apply_kernel(self, direction: str, old: Shape | None, shape: Shape) -> None:
        namespace, device = self.namespaces[direction], self._devices[direction]
        replay = self._replays.pop(direction, None)
        if replay is not None:
            replay[1].set()
            replay[0].join(5.0)
        first = old is None
        if shape.trace is not None:
            trace = shape.trace
            rate = trace.rate_bps_at(0.0, self.trace_step_s)
        else:
            rate = shape.rate_bps if shape.rate_bps is not None else None
        self._set_rate(direction, rate, add=first)
        if first:
            run(
                "tc",
                "-n",
                namespace,
                "qdisc",
                "add",
                "dev",
                device,
                "parent",
                "1:1",
                "handle",
                "10:",
                "bfifo",
                "limit",
                str(_wire_bytes(shape.queue_bytes)),
            )
        elif old is not None and old.queue_bytes != shape.queue_bytes:
            run(
                "tc",
                "-n",
                namespace,
                "qdisc",
                "change",
                "dev",
                device,
                "parent",
                "1:1",
                "handle",
                "10:",
                "bfifo",
                "limit",
                str(_wire_bytes(shape.queue_bytes)),
            )
        if shape.trace is not None:
            started = time.monotonic()
            self._trace_started[direction] = started
            stop = threading.Event()
            thread = threading.Thread(
                target=self._replay,
                args=(direction, shape, started, stop),
                name=f"netemu-replay-{direction}",
                daemon=True,
            )
            self._replays[direction] = (thread, stop)
            thread.start()

    def _replay(self, direction: str, shape: Shape, started: float, stop: threading.Event) -> None:
        """Steps htb through the trace: each step gets the trace's mean rate over that step."""
        assert shape.trace is not None
        step = 1
        while not stop.is_set():
            at = started + step * self.trace_step_s
            if stop.wait(max(0.0, at - time.monotonic())):
                return
            rate = shape.trace.rate_bps_at(step * self.trace_step_s, self.trace_step_s)
            try:
                self._set_rate(direction, rate, add=False)
            except SplitInferError:
                if stop.is_set():
                    return  # the link is closing: its namespace may be gone already
                raise
            step += 1

    def _set_rate(self, direction: str, rate_bps: float | None, *, add: bool) -> None:
        wire = _UNLIMITED_RATE_BPS if rate_bps is None else max(_MIN_RATE_BPS, rate_bps * WIRE_FACTOR)
        burst = _burst_bytes(wire)
        run(
            "tc",
            "-n",
            self.namespaces[direction],
            "class",
            "add" if add else "change",
            "dev",
            self._devices[direction],
            "parent",
            "1:",
            "classid",
            "1:1",
            "htb",
            "rate",
            f"{wire:.0f}bit",
            "ceil",
            f"{wire:.0f}bit",
            "burst",
            str(burst),
            "cburst",
            str(burst),
            "quantum",
            str(MSS_BYTES + HEADER_BYTES),
        )

    def _backlog_bytes(self, direction: str) -> int:
        out = run("tc", "-n", self.namespaces[direction], "-s", "qdisc", "show", "dev", self._devices[direction])
        return sum(_size(m) for m in re.findall(r"backlog (\S+)", out))


def _burst_bytes(wire_rate_bps: float) -> int:
    """htb's bucket: one full frame, or 1 ms at the rate when that is more. One frame keeps a slow
    link from sending a train at once; 1 ms lets htb's timers keep up at 100 Mbit/s."""
    return max(MSS_BYTES + HEADER_BYTES, int(wire_rate_bps / 8 * 0.001))


def _delay_only(shape: Shape) -> Shape:
    """What the edge relay does of a Shape: the delay and jitter; the kernel does the rest."""
    return Shape(delay_ms=shape.delay_ms, jitter_ms=shape.jitter_ms)


def _wire_bytes(payload_bytes: int) -> int:
    return max(MSS_BYTES + HEADER_BYTES, math.ceil(payload_bytes * WIRE_FACTOR))


def _size(text: str) -> int:
    """tc's backlog figure: 0b, 1514b, 3028b, 15Kb, 1Mb."""
    match = re.fullmatch(r"(\d+)([KMG]?)b", text)
    if not match:
        return 0
    return int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2)]
