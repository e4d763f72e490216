"""The server's lifecycle: binding, and the CLI loop that drains in-flight calls on SIGTERM."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from bundles import request_for, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from protos.bundle import load_bundle
from protos.errors import ServerUnavailableError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

SERVER = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve_forever
serve_forever(ServerConfig([sys.argv[1]], grace_s=20.0))
"""


def test_serve_binds_a_free_port_and_refuses_a_taken_one(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle])) as running:
        assert running.port > 0 and running.address == f"127.0.0.1:{running.port}"
        # Without SO_REUSEPORT off, this second bind would succeed and split the traffic.
        with pytest.raises(ServerUnavailableError, match=f"cannot listen on 127.0.0.1:{running.port}"):
            serve(ServerConfig([tiny_bundle], port=running.port))


@pytest.mark.timeout(60)
def test_sigterm_lets_an_open_stream_finish_then_exits(tiny_bundle: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tiny_bundle)], stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in proc.stderr:  # type: ignore[union-attr]
            found = re.search(r"listening on (\S+)", line)
            if found:
                address = found.group(1)
                break
        assert address, "the server never said where it listens"
        good = request_for(load_bundle(tiny_bundle), tiny_input())
        outbox: queue.Queue[pb.InferRequest | None] = queue.Queue()
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SplitInferenceStub(channel)
            replies = stub.InferStream(iter(outbox.get, None), timeout=30)
            outbox.put(good)
            assert not next(replies).HasField("error")

            proc.send_signal(signal.SIGTERM)
            # A call racing the shutdown may be cancelled rather than refused at the door.
            assert _refused_within(stub, good, 10.0) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            # The stream that was open when the signal came is still served.
            outbox.put(good)
            assert not next(replies).HasField("error")
            assert proc.poll() is None
            closed = time.perf_counter()
            outbox.put(None)
            assert list(replies) == []
        assert proc.wait(timeout=15) == 0
        assert time.perf_counter() - closed < 10, "the server waited for the whole grace period"
        assert "stopping" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _refused_within(stub: pb_grpc.SplitInferenceStub, request: pb.InferRequest, seconds: float) -> grpc.StatusCode:
    """The status of the first refused call: new calls are refused once the signal is handled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            stub.Infer(request, timeout=5)
        except grpc.RpcError as err:
            return err.code()
        time.sleep(0.05)
    raise AssertionError(f"new calls were still served {seconds} s after SIGTERM")
