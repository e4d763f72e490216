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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve, streams_per_connection
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY

INFER = "/splitinfer.v1.SplitInference/Infer"
TOKEN = "t0ken-phone-1"
WORKERS = 8
# A connection of its own per channel: channels of one process share connections otherwise.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _idle_calls(address: str, count: int, release: threading.Event) -> tuple[grpc.Channel, list]:
    """`count` Infer calls over one connection that send their headers and never their message."""
    channel = grpc.insecure_channel(address, options=OWN_CONNECTION)

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
            # (Calls beyond the workers are refused RESOURCE_EXHAUSTED by gRPC at once, never parked.)
            assert codes <= {
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            }, codes
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


INFER_STREAM = "/splitinfer.v1.SplitInference/InferStream"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="splitinfer.v1.SplitInference")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _idle_streams(address: str, count: int, release: threading.Event, metadata=None) -> tuple[grpc.Channel, list]:
    """`count` InferStreams over one connection that open and never send a message."""
    channel = grpc.insecure_channel(address, options=OWN_CONNECTION)

    def never() -> Iterator[bytes]:
        release.wait()
        return
        yield b""

    call = channel.stream_stream(INFER_STREAM, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return channel, [call(never(), metadata=metadata) for _ in range(count)]


def _ended_code(stream) -> grpc.StatusCode:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_one_authenticated_client_may_hold_only_its_share_of_the_workers(tiny_bundle: Path, tmp_path: Path) -> None:
    """A client with a good token that opens idle calls over many connections gets at most
    max_calls_per_client of them; the next is refused at once, and another client is served."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"phone-1 {TOKEN}\nphone-2 other-t0ken\n")
    release = threading.Event()
    config = ServerConfig([tiny_bundle], tokens=tokens, max_workers=WORKERS, max_calls_per_client=3)
    with serve(config) as running:
        auth = (("authorization", f"Bearer {TOKEN}"),)
        attacks = [_idle_streams(running.address, 2, release, auth) for _ in range(3)]
        try:
            streams = [stream for _, opened in attacks for stream in opened]
            deadline = time.monotonic() + 5
            while sum(stream.done() for stream in streams) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.call_limits.open_calls == 3
            refused = [stream for stream in streams if stream.done()]
            assert len(refused) == 3
            assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "max_calls_per_client 3" in refused[0].details()
            config = EdgeConfig(token="other-t0ken", timeout_s=5, retry=NO_RETRY)
            assert _answered(running.address, config, tiny_bundle) < 5
        finally:
            release.set()
            for channel, _ in attacks:
                channel.close()


def test_idle_streams_turn_health_not_serving_until_the_idle_timeout_frees_them(tiny_bundle: Path) -> None:
    """Without tokens, idle streams over several connections take every worker but one: both
    health ports say NOT_SERVING; the idle timeout cancels them, and the server serves again."""
    release = threading.Event()
    idle_s = 1.5
    with serve(ServerConfig([tiny_bundle], max_workers=WORKERS, health_port=0, idle_timeout_s=idle_s)) as running:
        health_address = f"127.0.0.1:{running.health_port}"
        assert _health(running.address) == SERVING
        per_connection = streams_per_connection(WORKERS)
        # Every worker but one, over two connections.
        counts = (per_connection, WORKERS - 1 - per_connection)
        attacks = [_idle_streams(running.address, count, release) for count in counts]
        started = time.monotonic()
        try:
            deadline = started + idle_s - 0.3
            while running.call_limits.open_calls < WORKERS - 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.call_limits.open_calls == WORKERS - 1
            assert _health(running.address) == NOT_SERVING
            assert _health(health_address) == NOT_SERVING
            codes = {_ended_code(stream) for _, streams in attacks for stream in streams}
            ended = time.monotonic() - started
            assert codes == {grpc.StatusCode.CANCELLED}, codes
            assert idle_s <= ended < idle_s + 2, ended
            config = EdgeConfig(timeout_s=5, retry=NO_RETRY)
            assert _answered(running.address, config, tiny_bundle) < 5
            assert _health(running.address) == SERVING
            assert _health(health_address) == SERVING
        finally:
            release.set()
            for channel, _ in attacks:
                channel.close()


def test_a_unary_call_that_never_sends_its_message_is_cancelled_after_the_idle_timeout(tiny_bundle: Path) -> None:
    release = threading.Event()
    with serve(ServerConfig([tiny_bundle], max_workers=WORKERS, idle_timeout_s=0.5)) as running:
        channel, idle = _idle_calls(running.address, 1, release)
        try:
            with pytest.raises(grpc.RpcError) as caught:
                idle[0].result(timeout=5)
            assert caught.value.code() == grpc.StatusCode.CANCELLED
            deadline = time.monotonic() + 2
            while running.call_limits.open_calls and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.call_limits.open_calls == 0
        finally:
            release.set()
            channel.close()
