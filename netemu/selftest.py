"""Measures what an emulated link delivers against what it was asked for.

For each rate, a fresh link (any backend) with that payload rate both ways and half the RTT as
the one-way delay each way, in front of a measuring endpoint on loopback in this process:
- **RTT**: `pings` one-byte messages echoed one at a time over an idle link (two more before them
  are dropped: they pay for connection setup); the median is compared with the RTT asked for plus
  the time the link needs to carry the message both ways (`Link.serialization_ms`: one byte at
  the payload rate for the user backend, a 67-byte frame for the kernel's htb, a 53-byte IP packet
  for the tun forwarder).
- **Throughput**, per direction: one bulk TCP transfer; the rate is the payload bytes the receiving
  application got over `seconds`, after a warm-up of 10% of that. The rate set is a payload rate in
  every backend (netemu/shape.py), so it is compared directly. Over the tun backend the endpoints'
  TCP meets the emulated RTT and queue: slow start overshoots the queue, and the bytes held behind
  its drops reach the application in one burst once they are repaired, up to a second later at
  1 Mbit/s; counted in the window they would add up to 5%, so the warm-up there is longer.
- **Loss** (tun backend, `loss` > 0, both directions): the same measurements; the rate asked for is
  then an upper bound, and the table shows what TCP makes of it.
Targets on an idle machine: throughput within ±5%, RTT within ±3 ms. On a busy machine the RTT
grows first (timers fire late); the delivered rate holds longer (capacity is accounted in time).
"""

from __future__ import annotations

import queue
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netemu.link import open_link
from netemu.shape import Shape
from protos.errors import SplitInferError

THROUGHPUT_TOLERANCE = 0.05
RTT_TOLERANCE_MS = 3.0
_WARMUP_SHARE = 0.1
# Past slow start and the repair of its drops over the tun backend (see above), at 1 Mbit/s too.
_TUN_WARMUP_S = 1.5
_CHUNK = bytes(256 * 1024)

Arrivals = list[tuple[float, int]]


@dataclass(frozen=True)
class Measurement:
    """One rate: what was asked for and what the link delivered (None: direction not measured)."""

    backend: str
    rate_bps: float
    rtt_ms: float
    loss: float
    expected_rtt_ms: float
    rtt_median_ms: float
    rtt_p90_ms: float
    uplink_bps: float | None
    downlink_bps: float | None

    def throughput_error(self, direction: str) -> float | None:
        """(delivered − asked) / asked for the direction, or None when it was not measured."""
        delivered = self.uplink_bps if direction == "up" else self.downlink_bps
        return None if delivered is None else delivered / self.rate_bps - 1

    @property
    def rtt_error_ms(self) -> float:
        return self.rtt_median_ms - self.expected_rtt_ms

    @property
    def ok(self) -> bool:
        errors = [e for e in (self.throughput_error("up"), self.throughput_error("down")) if e is not None]
        # Under loss the rate has no target: how much of it TCP keeps is what is measured.
        rates_ok = self.loss > 0 or all(abs(e) <= THROUGHPUT_TOLERANCE for e in errors)
        return rates_ok and abs(self.rtt_error_ms) <= RTT_TOLERANCE_MS


def queue_bytes_for(rate_bps: float) -> int:
    """The self-test's queue: 50 ms at the rate, at least 16 KiB; short enough to drain quickly
    between measurements, long enough to keep the link busy."""
    return max(16 * 1024, int(rate_bps / 8 * 0.05))


def measure_link(
    backend: str,
    rate_bps: float,
    rtt_ms: float,
    *,
    seconds: float = 3.0,
    directions: Sequence[str] = ("up", "down"),
    pings: int = 20,
    loss: float = 0.0,
) -> Measurement:
    """Measures one rate on a fresh link of `backend` ("user", "kernel", "tun" or "auto"), with
    `loss` on both directions (tun only)."""
    if not rate_bps > 0:
        raise SplitInferError(f"rate must be positive, got {rate_bps} bit/s")
    if not rtt_ms >= 0:
        raise SplitInferError(f"rtt must be non-negative, got {rtt_ms} ms")
    if not seconds >= 0.5:
        raise SplitInferError(f"seconds must be at least 0.5, got {seconds}")
    if pings < 1:
        raise SplitInferError(f"pings must be at least 1, got {pings}")
    unknown = [d for d in directions if d not in ("up", "down")]
    if unknown:
        raise SplitInferError(f"directions {unknown} are not 'up' or 'down'")
    shape = Shape(rate_bps=rate_bps, delay_ms=rtt_ms / 2, queue_bytes=queue_bytes_for(rate_bps), loss=loss)
    with Endpoint() as endpoint, open_link(backend, endpoint.address, shape, shape) as link:
        rtts = sorted(ping(link.address, pings))
        expected = rtt_ms + link.serialization_ms(1, "up") + link.serialization_ms(1, "down")
        warmup_s = _WARMUP_SHARE * seconds + (_TUN_WARMUP_S if link.backend == "tun" else 0.0)
        rates: dict[str, float] = {}
        for direction in directions:
            if direction == "up":
                rates["up"] = upload_rate_bps(link.address, endpoint, seconds, warmup_s=warmup_s)
            else:
                rates["down"] = download_rate_bps(link.address, seconds, warmup_s=warmup_s)
            # Whatever the aborted transfer left queued must not delay the next measurement.
            link.wait_idle(timeout_s=queue_bytes_for(rate_bps) * 8 / rate_bps * 2 + 5)
        return Measurement(
            backend=link.backend,
            rate_bps=rate_bps,
            rtt_ms=rtt_ms,
            loss=loss,
            expected_rtt_ms=expected,
            rtt_median_ms=statistics.median(rtts),
            rtt_p90_ms=rtts[min(len(rtts) - 1, int(0.9 * len(rtts)))],
            uplink_bps=rates.get("up"),
            downlink_bps=rates.get("down"),
        )


def run_selftest(
    backend: str,
    rates_bps: Sequence[float],
    rtt_ms: float,
    *,
    seconds: float = 3.0,
    directions: Sequence[str] = ("up", "down"),
    pings: int = 20,
    loss: float = 0.0,
    on_result: Callable[[Measurement], None] | None = None,
) -> list[Measurement]:
    if not rates_bps:
        raise SplitInferError("no rates to test")
    results = []
    for rate in rates_bps:
        result = measure_link(backend, rate, rtt_ms, seconds=seconds, directions=directions, pings=pings, loss=loss)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


# -- the measurements -------------------------------------------------------------------------------


def ping(address: str, count: int, *, gap_s: float = 0.005, timeout_s: float = 30.0) -> list[float]:
    """Round-trip times (ms) of `count` one-byte messages through `address` to an echoing Endpoint."""
    with _connect(address, timeout_s) as sock:
        sock.sendall(b"E")
        rtts = []
        for i in range(count + 2):
            start = time.perf_counter()
            sock.sendall(b"x")
            if not sock.recv(1):
                raise SplitInferError(f"the echo through {address} ended after {i} replies")
            if i >= 2:
                rtts.append((time.perf_counter() - start) * 1e3)
            time.sleep(gap_s)
        return rtts


def upload_rate_bps(address: str, endpoint: Endpoint, seconds: float, *, warmup_s: float | None = None) -> float:
    """Sends as fast as the link takes it; the rate of what the endpoint gets over `seconds` after
    `warmup_s` (default: 10% of `seconds`, within them)."""
    warmup_s, total_s = _timing(seconds, warmup_s)
    flood(address, total_s)
    return rate_bps(endpoint.arrivals(timeout_s=total_s + 60), warmup_s)


def flood(address: str, seconds: float) -> None:
    """Sends as fast as the link takes it to an Endpoint's sink, which keeps the arrivals of the
    first `seconds` (`Endpoint.arrivals`) and then hangs up, which ends this."""
    with _connect(address, seconds + 60) as sock:
        sock.sendall(b"S" + struct.pack("!d", seconds))
        try:
            while True:
                sock.sendall(_CHUNK)
        except OSError:
            pass  # the endpoint hung up: the measurement is over


def download_rate_bps(address: str, seconds: float, *, warmup_s: float | None = None) -> float:
    """Receives what the endpoint sends as fast as the link carries it; the rate over `seconds`
    after `warmup_s` (as in `upload_rate_bps`)."""
    warmup_s, seconds = _timing(seconds, warmup_s)
    arrivals: Arrivals = []
    buffer = bytearray(256 * 1024)
    with _connect(address, seconds + 60) as sock:
        sock.sendall(b"F")
        while True:
            n = sock.recv_into(buffer)
            now = time.perf_counter()
            if not n:
                break
            arrivals.append((now, n))
            if now - arrivals[0][0] >= seconds:
                break
        _reset(sock)
    return rate_bps(arrivals, warmup_s)


def _timing(seconds: float, warmup_s: float | None) -> tuple[float, float]:
    """(warm-up, whole transfer): the default warm-up is the first 10% of `seconds`; a longer one
    is added before them, so that the window measured stays 90% of `seconds`."""
    default = _WARMUP_SHARE * seconds
    if warmup_s is None or warmup_s <= default:
        return default, seconds
    return warmup_s, seconds + warmup_s - default


def rate_bps(arrivals: Arrivals, warmup_s: float) -> float:
    """Payload bit/s from `warmup_s` after the first arrival to the last one."""
    if not arrivals:
        raise SplitInferError("nothing arrived through the link")
    start = arrivals[0][0] + warmup_s
    window = [(t, n) for t, n in arrivals if t >= start]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        raise SplitInferError(f"too few arrivals ({len(arrivals)}) to measure a rate after a {warmup_s:g} s warm-up")
    # Bytes that arrived after the window's first arrival, over the time since it.
    return sum(n for _, n in window[1:]) * 8 / (window[-1][0] - window[0][0])


class Endpoint:
    """The link's target for the measurements: a loopback TCP server whose first byte on each
    connection says what to do: E echo, S sink (times what arrives for the seconds that follow as
    a double, then hangs up), F fountain (sends until the peer hangs up)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._arrivals: queue.Queue[Arrivals] = queue.Queue()
        self._closed = False
        threading.Thread(target=self._accept, name="netemu-endpoint", daemon=True).start()

    def arrivals(self, timeout_s: float) -> Arrivals:
        try:
            return self._arrivals.get(timeout=timeout_s)
        except queue.Empty:
            raise SplitInferError(f"the endpoint received nothing within {timeout_s:.0f} s") from None

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock,), name="netemu-endpoint-conn", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                mode = _recv_exactly(sock, 1)
                if mode == b"E":
                    while data := sock.recv(4096):
                        sock.sendall(data)
                elif mode == b"S":
                    (seconds,) = struct.unpack("!d", _recv_exactly(sock, 8))
                    self._arrivals.put(self._sink(sock, seconds))
                elif mode == b"F":
                    while True:
                        sock.sendall(_CHUNK)
            except OSError:
                pass

    @staticmethod
    def _sink(sock: socket.socket, seconds: float) -> Arrivals:
        arrivals: Arrivals = []
        buffer = bytearray(256 * 1024)
        while True:
            try:
                n = sock.recv_into(buffer)
            except OSError:
                break
            now = time.perf_counter()
            if not n:
                break
            arrivals.append((now, n))
            if now - arrivals[0][0] >= seconds:
                break
        _reset(sock)
        return arrivals


def _connect(address: str, timeout_s: float) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def _reset(sock: socket.socket) -> None:
    """Hangs up with a reset: the sender learns at once that the measurement is over."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
