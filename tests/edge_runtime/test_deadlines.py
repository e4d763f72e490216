"""A request's deadline holds whatever the server does: retries and their waits included for a
unary call, and per reply on a stream, against a server that is not there, one that accepts
connections and never speaks, and one that takes requests and never answers them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from bundles import tiny_input
from ports import free_port

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import RetryPolicy
from protos.errors import ServerUnavailableError
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

# Many attempts and a long elapsed budget: only the deadline can end the request early.
PATIENT = RetryPolicy(attempts=100, initial_backoff_s=0.05, max_backoff_s=0.2, max_elapsed_s=60.0)
DEADLINE_S = 1.0
# What the deadline may be overrun by: a check every 20 ms, a thread or two to wake.
SLACK_S = 0.25


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


class _NeverAnswers(pb_grpc.SplitInferenceServicer):
    """A gRPC server that takes every request and answers none (a hung tail)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def Infer(self, request, context):
        self.release.wait()
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    def InferStream(self, requests, context):
        for _ in requests:
            self.release.wait()
            return


@pytest.fixture
def hung_server() -> Iterator[str]:
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SplitInferenceServicer_to_server(_NeverAnswers(release), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0)


@pytest.mark.parametrize("where", ["nobody", "silent", "hung"])
def test_a_unary_deadline_covers_every_attempt(
    where: str, tiny_bundle: Path, silent_listener: str, hung_server: str
) -> None:
    address = {"nobody": f"127.0.0.1:{free_port()}", "silent": silent_listener, "hung": hung_server}[where]
    with EdgeClient(tiny_bundle, address, EdgeConfig(retry=PATIENT, timeout_s=DEADLINE_S)) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            client.infer(tiny_input())
        elapsed = time.monotonic() - start
    assert elapsed <= DEADLINE_S + SLACK_S, elapsed


@pytest.mark.parametrize("where", ["silent", "hung"])
def test_a_stream_obeys_the_deadline_of_each_reply(
    where: str, tiny_bundle: Path, silent_listener: str, hung_server: str
) -> None:
    address = {"silent": silent_listener, "hung": hung_server}[where]
    with EdgeClient(tiny_bundle, address, EdgeConfig(timeout_s=DEADLINE_S)) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=r"within 1 s"):
            list(client.infer_stream([tiny_input(0), tiny_input(1)]))
        elapsed = time.monotonic() - start
    assert elapsed <= DEADLINE_S + SLACK_S, elapsed
