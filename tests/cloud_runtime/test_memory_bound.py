"""Memory bounded by configuration: a served bundle needs messages of a known size, so the server
takes no larger ones (refused from their length prefix, before they are buffered). 24 concurrent
64 MiB messages, with or without a token, raise the server's peak memory by what 24 calls cost
and not by what 24 such messages would."""

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

MESSAGE_BYTES = 64 << 20
CONCURRENT = 24


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _reset_peak(pid: int) -> None:
    # Linux resets VmHWM (the peak resident set) to the current one when 5 is written here.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


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
            before = _status_bytes(server.process.pid, "VmRSS")
            _reset_peak(server.process.pid)

            threads = [threading.Thread(target=send) for _ in range(CONCURRENT)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        peak = _status_bytes(server.process.pid, "VmHWM")
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * CONCURRENT, codes
    # Buffered, they would take CONCURRENT × 64 MiB = 1.5 GiB at the peak. Refused, the peak grows
    # by what the calls themselves take: a worker each, gRPC's per-call state, and what HTTP/2 flow
    # control let in before the refusal. Measured here: 20-50 MiB, now and then 125-330 MiB, for
    # 2, 8, 32 or 64 MiB messages alike (the window, not the message, sets it). A quarter of the
    # buffered figure keeps the test about buffering and not about that tail.
    assert peak - before < CONCURRENT * MESSAGE_BYTES // 4, (before, peak)
