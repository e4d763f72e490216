"""The user-space link, measured with real sockets on loopback: delivered rate and delay, each
direction on its own, live rate changes, the shared queue, jitter without reordering, trace replay,
and a real gRPC call from the edge client to a real server through it.

Rates are checked to ±5% (capacity is accounted in time, so a busy machine barely moves them);
delays can only come out late on a busy machine, so their upper margins are generous.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bundles import reference_output, tiny_input

from edge_runtime.client import EdgeClient
from netemu.backends.user import LinkEmulator
from netemu.selftest import Endpoint, download_rate_bps, flood, ping, upload_rate_bps
from netemu.shape import Shape
from netemu.traces import RateTrace, load_trace
from protos.errors import SplitInferError

SHIPPED_TRACES = Path(__file__).resolve().parents[2] / "experiment" / "examples" / "traces"
RATE_TOLERANCE = 0.05
# A delay is never early by more than the proxy's early-release allowance (0.1 ms per timer).
EARLY_MS = 0.5
LATE_MS = 12.0


def _bytes_in(arrivals: list[tuple[float, int]], start: float, end: float) -> int:
    return sum(n for t, n in arrivals if start <= t < end)


@pytest.mark.parametrize(("rate_mbit", "rtt_ms"), [(2.0, 30.0), (20.0, 10.0)])
def test_rate_and_delay_are_what_was_set(endpoint: Endpoint, rate_mbit: float, rtt_ms: float) -> None:
    shape = Shape(rate_bps=rate_mbit * 1e6, delay_ms=rtt_ms / 2)
    with LinkEmulator(endpoint.address, uplink=shape, downlink=shape) as link:
        rtts = ping(link.address, 10)
        expected = rtt_ms + 2 * link.serialization_ms(1)
        assert expected - EARLY_MS <= float(np.median(rtts)) <= expected + LATE_MS, rtts
        assert min(rtts) >= expected - EARLY_MS, rtts
        delivered = upload_rate_bps(link.address, endpoint, seconds=1.5)
        assert delivered == pytest.approx(rate_mbit * 1e6, rel=RATE_TOLERANCE)


def test_each_direction_has_its_own_rate(endpoint: Endpoint) -> None:
    with LinkEmulator(endpoint.address, uplink=Shape(rate_bps=1e6), downlink=Shape(rate_bps=8e6)) as link:
        assert download_rate_bps(link.address, seconds=1.5) == pytest.approx(8e6, rel=RATE_TOLERANCE)
        assert link.delivered_bytes("down") > 1e6
        assert link.delivered_bytes("up") < 100  # the request byte only


def test_a_live_rate_change_takes_effect_at_once(endpoint: Endpoint) -> None:
    with LinkEmulator(endpoint.address, uplink=Shape(rate_bps=1e6)) as link:
        start = time.perf_counter()
        sender = threading.Thread(target=flood, args=(link.address, 2.4), daemon=True)
        sender.start()
        time.sleep(0.8)
        up_at = time.perf_counter()
        link.set_uplink(rate_bps=8e6)
        time.sleep(0.8)
        down_at = time.perf_counter()
        link.set_uplink(rate_bps=1e6)
        arrivals = endpoint.arrivals(timeout_s=30)
        sender.join(10)
    assert link.uplink.rate_bps == 1e6
    # Within ~100 ms of each change the link runs at the new rate: bytes already queued included.
    before = _bytes_in(arrivals, start + 0.3, up_at) * 8 / (up_at - start - 0.3)
    faster = _bytes_in(arrivals, up_at + 0.1, up_at + 0.6) * 8 / 0.5
    slower = _bytes_in(arrivals, down_at + 0.1, down_at + 0.6) * 8 / 0.5
    assert before == pytest.approx(1e6, rel=0.1)
    assert faster == pytest.approx(8e6, rel=0.1)
    assert slower == pytest.approx(1e6, rel=0.15)


def test_a_full_queue_delays_every_connection_behind_it(endpoint: Endpoint) -> None:
    """The queue is shared and holds queue_bytes: a ping behind a bulk transfer waits for it to
    drain (bufferbloat); the bulk sender is held back by TCP, not by drops."""
    queue_bytes = 16 * 1024
    rate = 1e6
    with LinkEmulator(endpoint.address, uplink=Shape(rate_bps=rate, queue_bytes=queue_bytes)) as link:
        idle = float(np.median(ping(link.address, 5)))
        sender = threading.Thread(target=flood, args=(link.address, 1.5), daemon=True)
        sender.start()
        time.sleep(0.4)
        loaded = float(np.median(ping(link.address, 3, gap_s=0.0)))
        delivered = endpoint.arrivals(timeout_s=30)
        sender.join(10)
    drain_ms = queue_bytes * 8 / rate * 1e3  # 131 ms
    assert idle < 5
    assert drain_ms - 25 <= loaded - idle <= drain_ms + 40, (idle, loaded)
    assert sum(n for _, n in delivered) > 0.9 * rate / 8 * 1.5 - queue_bytes


def test_jitter_varies_the_delay_without_reordering_bytes(endpoint: Endpoint) -> None:
    shape = Shape(rate_bps=5e6, delay_ms=20, jitter_ms=10)
    payload = os.urandom(300_000)
    with LinkEmulator(endpoint.address, uplink=shape, downlink=shape, seed=7) as link:
        rtts = ping(link.address, 15)
        host, port = link.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"E")
            writer = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            writer.start()
            echoed = bytearray()
            while len(echoed) < len(payload):
                chunk = sock.recv(65536)
                assert chunk, "the link closed early"
                echoed += chunk
            writer.join(10)
    assert bytes(echoed) == payload
    assert max(rtts) - min(rtts) > 5, rtts  # ±10 ms each way
    assert min(rtts) >= 20 - EARLY_MS  # never below delay - jitter, both ways


def test_trace_replay_delivers_the_trace_capacity(endpoint: Endpoint) -> None:
    # 2 Mbit/s for half a second, 6 for the next half: 4 Mbit/s over each whole second.
    trace = RateTrace.from_rates([(0.0, 2e6), (0.5, 6e6)], period_s=1.0, source="steps")
    with LinkEmulator(endpoint.address, uplink=Shape(trace=trace)) as link:
        sender = threading.Thread(target=flood, args=(link.address, 2.2), daemon=True)
        sender.start()
        arrivals = endpoint.arrivals(timeout_s=30)
        sender.join(10)
        assert link.rate_bps_now("up", window_s=1.0) == pytest.approx(4e6, rel=0.01)
        origin = link.trace_origin_s("up")  # time.monotonic, the same clock as perf_counter on Linux
    first = arrivals[0][0]
    assert _bytes_in(arrivals, first + 0.1, first + 2.1) * 8 / 2.0 == pytest.approx(4e6, rel=RATE_TOLERANCE)
    # Each half of the trace at its own rate (whole halves inside the transfer, their middle 0.3 s).
    halves = [origin + k / 2 for k in range(8) if origin + k / 2 >= first and origin + (k + 1) / 2 <= first + 2.2]
    assert len(halves) >= 3
    for start in halves:
        expected = 2e6 if round((start - origin) * 2) % 2 == 0 else 6e6
        delivered = _bytes_in(arrivals, start + 0.1, start + 0.4) * 8 / 0.3
        assert delivered == pytest.approx(expected, rel=0.15), (start - origin, delivered)


def test_replaying_a_cellular_trace_follows_its_capacity(endpoint: Endpoint) -> None:
    trace = load_trace(SHIPPED_TRACES / "tmobile-lte-120s.up")
    with LinkEmulator(endpoint.address, uplink=Shape(trace=trace, queue_bytes=256 * 1024)) as link:
        sender = threading.Thread(target=flood, args=(link.address, 2.2), daemon=True)
        sender.start()
        arrivals = endpoint.arrivals(timeout_s=30)
        sender.join(10)
        # time.monotonic and time.perf_counter are the same clock on Linux.
        origin = link.trace_origin_s("up")
    first = arrivals[0][0]
    start, end = first + 0.2, first + 2.2
    expected = trace.bytes_between(start - origin, end - origin)
    assert _bytes_in(arrivals, start, end) == pytest.approx(expected, rel=RATE_TOLERANCE)


def test_grpc_through_the_link(endpoint: Endpoint, tiny_bundle: Path, tiny_server: str) -> None:
    up = Shape(rate_bps=2e6, delay_ms=15)
    down = Shape(rate_bps=10e6, delay_ms=15)
    x = tiny_input()
    with LinkEmulator(tiny_server, uplink=up, downlink=down) as link:
        with EdgeClient(tiny_bundle, link.address) as client:
            client.infer(x)  # connection setup: HTTP/2 preface and settings cross the link too
            result = client.infer(x)
            link.set_uplink(rate_bps=0.2e6)
            slow = client.infer(x)
        assert link.delivered_bytes("up") > 2 * result.request_bytes
    np.testing.assert_allclose(result.outputs["logits"], reference_output(x), rtol=1e-5, atol=1e-6)
    # One round trip at least, plus the request at the uplink's rate; gRPC's threads wake late on
    # a busy machine, hence the wide upper margin.
    assert 30.0 <= result.timing.network_ms <= 30.0 + 80, result.timing
    serialise_ms = slow.request_bytes * 8 / 0.2e6 * 1e3
    assert slow.timing.network_ms >= 30.0 + serialise_ms - EARLY_MS, (slow.timing, serialise_ms)


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment to find one, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_settings_and_addresses_are_checked(closed_port: int) -> None:
    with pytest.raises(SplitInferError, match="'nowhere' is not HOST:PORT"):
        LinkEmulator("nowhere")
    with LinkEmulator(f"127.0.0.1:{closed_port}") as link:
        with pytest.raises(SplitInferError, match=r"unknown link settings \['speed'\]"):
            link.set_uplink(speed=1)
        # A rate replaces a trace and a trace a rate.
        trace = RateTrace.from_rates([(0.0, 1e6)], period_s=1.0)
        assert link.set_downlink(trace=trace).rate_bps is None
        assert link.set_downlink(rate_bps=3e6).trace is None
        with pytest.raises(SplitInferError, match="direction 'sideways'"):
            link.rate_bps_now("sideways")
    link.close()  # closing twice is harmless
    with pytest.raises(SplitInferError, match="is closed"):
        link.set_uplink(rate_bps=1e6)


def test_an_unreachable_target_resets_the_client(closed_port: int) -> None:
    # The proxy accepts, fails to reach the target, and resets the client's connection.
    with LinkEmulator(f"127.0.0.1:{closed_port}") as link:
        host, port = link.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.settimeout(10)
            with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
                if sock.recv(1) == b"":
                    raise ConnectionResetError("closed")
