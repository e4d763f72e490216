"""The tun backend: packets forwarded between two network namespaces this test creates and removes,
with the endpoints' TCP across them. Skipped, with the reason, where it cannot run (not root, no
iproute2, no TUN in a namespace). The other backends' refusal of loss runs everywhere (the
user backend's) or wherever the kernel backend can run."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from netns import namespaces

from netemu.backends.forwarder import IP_FACTOR
from netemu.backends.kernel import KernelLink, kernel_unavailable_reason
from netemu.backends.tun import TunLink, tun_unavailable_reason
from netemu.backends.user import LinkEmulator
from netemu.link import open_link
from netemu.selftest import Endpoint, download_rate_bps, ping, upload_rate_bps
from netemu.shape import Shape
from netemu.traces import load_trace
from protos.errors import SplitInferError

REASON = tun_unavailable_reason()
needs_tun = pytest.mark.skipif(REASON is not None, reason=f"tun backend unavailable: {REASON}")


class DigestServer:
    """Reads a connection to its end and answers with the SHA-256 of what it got."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with sock:
                digest = hashlib.sha256()
                while data := sock.recv(256 * 1024):
                    digest.update(data)
                sock.sendall(digest.digest())

    def close(self) -> None:
        self._listener.close()


@needs_tun
def test_rate_and_delay_through_the_tun_link(endpoint: Endpoint) -> None:
    # A deep queue: the transfers' TCP fills it slowly after slow start, so no drop (whose repair
    # delivers held-back bytes in one burst) falls inside the measured 1.5 s.
    shape = Shape(rate_bps=5e6, delay_ms=10, queue_bytes=256 * 1024)
    with TunLink(endpoint.address, uplink=shape, downlink=shape) as link:
        assert link.backend == "tun"
        created = set(link.namespaces.values())
        assert created <= namespaces()
        rtts = ping(link.address, 10)
        expected = 20 + link.serialization_ms(1, "up") + link.serialization_ms(1, "down")
        # The relays on both sides and the forwarder's wake-ups add ~1 ms; a busy machine more.
        assert expected - 0.5 <= float(np.median(rtts)) <= expected + 5, rtts
        # A payload rate: full-size packets carry 1448 of their 1500 bytes.
        assert upload_rate_bps(link.address, endpoint, 1.5, warmup_s=1.0) == pytest.approx(5e6, rel=0.05)
        assert link.wait_idle(10)
        assert download_rate_bps(link.address, 1.5, warmup_s=1.0) == pytest.approx(5e6, rel=0.05)
        stats = link.stats("up")
        assert stats.forwarded > 0 and stats.dropped_loss == 0
    assert not created & namespaces(), "the namespaces outlived the link"


@needs_tun
def test_loss_is_repaired_by_tcp_and_counted() -> None:
    server = DigestServer()
    payload = os.urandom(2 * 1024 * 1024)
    try:
        # A short RTT keeps TCP fast under 5% loss (its rate falls as 1/(RTT·√loss)).
        uplink = Shape(rate_bps=20e6, delay_ms=1, queue_bytes=128 * 1024, loss=0.05)
        with TunLink(server.address, uplink, Shape(delay_ms=1), seed=3) as link:
            host, port = link.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                digest = b""
                while chunk := sock.recv(64):
                    digest += chunk
            assert link.wait_idle(10)
            stats = link.stats("up")
    finally:
        server.close()
    assert digest == hashlib.sha256(payload).digest(), "the bytes did not arrive intact"
    assert stats.packets >= 1000 and 0.02 <= stats.loss_share <= 0.09, stats
    assert stats.forwarded == stats.packets - stats.dropped_loss - stats.dropped_queue


@needs_tun
def test_trace_replay_delivers_its_mean_rate(endpoint: Endpoint, tmp_path: Path) -> None:
    # mahimahi: one 1500-byte opportunity per line; 3 per ms for 50 ms, then 1 per ms for 50 ms.
    lines = [t for t in range(1, 51) for _ in range(3)] + list(range(51, 101))
    path = tmp_path / "steps.up"
    path.write_text("\n".join(map(str, lines)) + "\n")
    trace = load_trace(path)
    with TunLink(endpoint.address, uplink=Shape(trace=trace, delay_ms=5, queue_bytes=64 * 1024)) as link:
        # Each opportunity carries 1500 bytes of IP packets, as in mahimahi: 1448 of them payload.
        expected = trace.mean_rate_bps / IP_FACTOR
        assert link.rate_bps_now("up") == pytest.approx(expected, rel=0.01)
        assert upload_rate_bps(link.address, endpoint, 2.0, warmup_s=1.0) == pytest.approx(expected, rel=0.05)


@needs_tun
def test_a_new_rate_applies_at_once_and_auto_takes_tun_for_loss(endpoint: Endpoint) -> None:
    with open_link("auto", endpoint.address, Shape(rate_bps=2e6, loss=0.001)) as link:
        assert link.backend == "tun"
        assert link.set_uplink(rate_bps=8e6).rate_bps == 8e6
        assert link.uplink.loss == 0.001 and link.rate_bps_now("up") == 8e6
        assert upload_rate_bps(link.address, endpoint, 1.5, warmup_s=1.0) == pytest.approx(8e6, rel=0.08)


def test_the_user_backend_refuses_loss(endpoint: Endpoint) -> None:
    with pytest.raises(SplitInferError, match="loss needs the tun backend"):
        LinkEmulator(endpoint.address, uplink=Shape(loss=0.01))
    with LinkEmulator(endpoint.address) as link:
        with pytest.raises(SplitInferError, match="loss needs the tun backend"):
            link.set_downlink(loss=0.02)
        assert link.downlink.loss == 0.0


@pytest.mark.skipif(
    kernel_unavailable_reason() is not None, reason=f"kernel backend unavailable: {kernel_unavailable_reason()}"
)
def test_the_kernel_backend_refuses_loss(endpoint: Endpoint) -> None:
    with pytest.raises(SplitInferError, match="loss needs the tun backend"):
        KernelLink(endpoint.address, downlink=Shape(loss=0.01))
    with KernelLink(endpoint.address) as link:
        with pytest.raises(SplitInferError, match="loss needs the tun backend"):
            link.set_uplink(loss=0.02)
