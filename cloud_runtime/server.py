"""Starting and stopping a splitinfer server: `serve()` binds, starts and returns the running
server (with the port it got, so tests can ask for port 0); `serve_forever()` is the CLI's loop,
which drains in-flight requests on SIGTERM/SIGINT before it returns.
"""

from __future__ import annotations

import logging
import signal
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import grpc

from cloud_runtime.servicer import SplitInferenceServicer
from cloud_runtime.tails import TailService
from protos.bundle import Bundle, load_bundle
from protos.errors import ServerUnavailableError
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_GRACE_S = 5.0


@dataclass(frozen=True)
class RunningServer:
    """A started server and the port it is bound to; a context manager that stops it on exit."""

    server: grpc.Server
    tails: TailService
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self, grace_s: float | None = DEFAULT_GRACE_S) -> None:
        """Refuses new calls, lets in-flight ones finish for up to grace_s, and returns once stopped."""
        self.server.stop(grace_s).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    bundles: list[str | Path | Bundle],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int | None = None,
    max_workers: int = 8,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Serves the tails of `bundles` on host:port (0: a free port); returns once it is listening."""
    tails = TailService([b if isinstance(b, Bundle) else load_bundle(b) for b in bundles], threads=threads)
    options = [
        # gRPC's default 4 MB receive limit is below an early-cut activation of a large input (raw
        # fp32); one explicit limit, the same both ways, makes the largest request a choice. A larger
        # request is refused RESOURCE_EXHAUSTED before it reaches the servicer.
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC sets SO_REUSEPORT on Linux by default: a second server on a busy port would start
        # "successfully" and take half the traffic. Binding must fail instead.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    pb_grpc.add_SplitInferenceServicer_to_server(SplitInferenceServicer(tails), server)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_insecure_port(bind)
    except RuntimeError as err:
        raise ServerUnavailableError(f"cannot listen on {bind}: {err}") from err
    server.start()
    return RunningServer(server, tails, host, bound_port)


def serve_forever(
    bundles: list[str | Path | Bundle],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int | None = None,
    max_workers: int = 8,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    grace_s: float = DEFAULT_GRACE_S,
) -> None:
    """Serves until SIGTERM or SIGINT; call from the main thread (signal handlers live there)."""
    running = serve(
        bundles, host=host, port=port, threads=threads, max_workers=max_workers, max_message_bytes=max_message_bytes
    )
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # An orchestrator sends SIGTERM before it kills the process: refusing new calls while the
        # in-flight ones finish means no device loses a request it already sent. A second signal
        # means the operator will not wait.
        nonlocal signals_seen
        signals_seen += 1
        log.info("%s: stopping (grace %.1f s)", signal.Signals(signum).name, grace_s if signals_seen == 1 else 0.0)
        running.server.stop(grace_s if signals_seen == 1 else 0)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("splitinfer server listening on %s", running.address)
        running.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("server stopped")
