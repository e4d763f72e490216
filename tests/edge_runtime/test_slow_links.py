"""The client connects over any real link: the first request over a long round trip (3G,
satellite, a congested cell), plaintext or TLS, or over a very slow one, succeeds at its first
attempt within its deadline (netemu's user-space link between the client and a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bundles import reference_output, tiny_input

from cloud_runtime.certs import DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from netemu import LinkEmulator, Shape
from protos.tls import TLSFiles

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def tls_server(tiny_bundle: Path, dev_certs: DevCerts) -> Iterator[RunningServer]:
    with serve(
        ServerConfig([tiny_bundle], threads=1, tls=TLSFiles(dev_certs.server_cert, dev_certs.server_key))
    ) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rtt_ms", "rate_bps", "tls"),
    [(400, None, False), (700, None, False), (1000, None, False), (2000, None, False),
     (400, None, True), (700, None, True), (1000, None, True), (300, 0.1e6, True), (300, 0.1e6, False)],
)  # fmt: skip
def test_the_first_request_over_a_slow_link_succeeds_at_once(
    rtt_ms: int,
    rate_bps: float | None,
    tls: bool,
    tiny_bundle: Path,
    tiny_server: str,
    tls_server: RunningServer,
    dev_certs: DevCerts,
) -> None:
    shape = Shape(rate_bps=rate_bps, delay_ms=rtt_ms / 2)
    target = tls_server.address if tls else tiny_server
    config = EdgeConfig(timeout_s=DEADLINE_S, tls_ca=dev_certs.ca if tls else None)
    with (
        LinkEmulator(target, uplink=shape, downlink=shape) as link,
        EdgeClient(tiny_bundle, link.address, config) as client,
    ):
        result = client.infer(tiny_input())
    assert result.attempts == 1 and not result.fallback
    # Connecting, (TLS,) the call: a handful of round trips, not the deadline.
    assert result.timing.total_ms < 8 * rtt_ms + 2_000
    assert abs(result.outputs["logits"] - reference_output(tiny_input())).max() < 1e-4
