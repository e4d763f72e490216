"""No client can starve the server: calls that open and never send their request, from one
connection, with no token, leave an authenticated client answered within its deadline (the token
is checked from the metadata, before any request is awaited); and without tokens one connection
cannot hold every worker (HTTP/2's limit on concurrent streams per connection)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundles import reference_output, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve, streams_per_connection
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY

INFER = "/splitinfer.v1.SplitInference/Infer"
TOKEN = "t0ken-phone-1"
WORKERS = 8


def _idle_calls(address: str, count: int, release: threading.Event) -> tuple[grpc.Channel, list]:
    """`count` Infer calls over one connection that send their headers and never their message."""
    channel = grpc.insecure_channel(address)

    def never() -> Iterator[bytes]:
        release.wait()
        return
        yield b""

    call = channel.stream_unary(INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return channel, [call.future(never()) for _ in range(count)]


def _answered(address: str, config: EdgeConfig, bundle: Path) -> float:
    with EdgeClient(bundle, address, config) as client:
        start = time.monotonic()
        result = client.infer(tiny_input())
        assert abs(result.outputs["logits"] - reference_output(tiny_input())).max() < 1e-4
        return time.monotonic() - start


def test_calls_without_a_token_that_never_send_leave_an_authenticated_client_served(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"phone-1 {TOKEN}\n")
    release = threading.Event()
    with serve(ServerConfig([tiny_bundle], tokens=tokens, max_workers=WORKERS)) as running:
        # As many connections as workers, each with as many idle calls as it may open.
        attacks = [_idle_calls(running.address, streams_per_connection(WORKERS), release) for _ in range(WORKERS)]
        try:
            # Every one of them is refused at once, from its metadata alone: none waits for a message.
            codes = set()
            for _, idle in attacks:
                for future in idle:
                    with pytest.raises(grpc.RpcError) as caught:
                        future.result(timeout=10)
                    codes.add(caught.value.code())
            # (A stream beyond what a connection may open is refused by HTTP/2 itself: UNAVAILABLE.)
            assert grpc.StatusCode.UNAUTHENTICATED in codes, codes
            assert codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE}, codes
            config = EdgeConfig(token=TOKEN, timeout_s=5, retry=NO_RETRY)
            assert _answered(running.address, config, tiny_bundle) < 5
        finally:
            release.set()
            for channel, _ in attacks:
                channel.close()


def test_one_connection_cannot_hold_every_worker(tiny_bundle: Path) -> None:
    release = threading.Event()
    assert streams_per_connection(WORKERS) < WORKERS
    with serve(ServerConfig([tiny_bundle], max_workers=WORKERS)) as running:
        channel, idle = _idle_calls(running.address, 4 * WORKERS, release)
        try:
            time.sleep(0.5)  # the idle calls have taken what their connection may
            config = EdgeConfig(timeout_s=5, retry=NO_RETRY)
            assert _answered(running.address, config, tiny_bundle) < 5
        finally:
            release.set()
            for future in idle:
                future.cancel()
            channel.close()
