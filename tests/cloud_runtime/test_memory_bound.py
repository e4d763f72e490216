"""Memory bounded by configuration: a served bundle needs messages of a known size, so the server
takes no larger ones (refused from their length prefix, before they are buffered). 24 concurrent
8 MiB messages, with or without a token, leave the server's memory where it was."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import start_server_process
from cloud_runtime.server import message_limit
from protos.bundle import load_bundle
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES

MESSAGE_BYTES = 8 << 20
CONCURRENT = 24


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_limit_is_what_the_bundles_need(tiny_bundle: Path) -> None:
    limit = message_limit([load_bundle(tiny_bundle)], DEFAULT_MAX_MESSAGE_BYTES)
    assert limit < 2 << 20  # a 1 KB cut needs no 64 MiB messages
    assert message_limit([load_bundle(tiny_bundle)], 1000) == 1000  # never above the ceiling


@pytest.mark.parametrize("with_token", [False, True])
def test_concurrent_oversized_messages_leave_memory_where_it_was(
    with_token: bool, tiny_bundle: Path, tmp_path: Path
) -> None:
    tokens = None
    if with_token:
        tokens = tmp_path / "tokens"
        tokens.write_text("phone-1 t0ken-phone-1\n")
    metadata = (("authorization", "Bearer t0ken-phone-1"),) if with_token else None
    payload = b"\x0a" + b"\xff" * MESSAGE_BYTES  # a message that claims to be far larger than any cut
    with start_server_process(ServerConfig([tiny_bundle], threads=1, tokens=tokens)) as server:
        codes: list[grpc.StatusCode] = []
        with grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 2 * MESSAGE_BYTES)]
        ) as channel:
            call = channel.unary_unary("/splitinfer.v1.SplitInference/Infer")

            def send() -> None:
                try:
                    call(payload, timeout=30, metadata=metadata)
                except grpc.RpcError as err:
                    codes.append(err.code())

            # A first round warms what a server allocates once (workers, gRPC's buffers).
            send()
            codes.clear()
            before = _rss_bytes(server.process.pid)

            threads = [threading.Thread(target=send) for _ in range(CONCURRENT)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        after = _rss_bytes(server.process.pid)
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * CONCURRENT, codes
    # Buffered, they would have taken CONCURRENT × 8 MiB = 192 MiB; refused, what the calls
    # themselves take (a worker each, gRPC's per-call state).
    assert after - before < 64 << 20, (before, after)
