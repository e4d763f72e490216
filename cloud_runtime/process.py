"""The server as a child process: `splitinfer serve` started from a ServerConfig (by default on a
free port), optionally pinned to some CPUs, returned once it listens.

Benchmarks, the demo and fault-injection tests need the server in its own process, as in a
deployment: sharing a process would share the GIL with the client, and sharing cores would charge
the server's work to the device (on one machine, pin the two to different CPUs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.call_limits import DEFAULT_IDLE_TIMEOUT_S
from cloud_runtime.config import DEFAULT_GRACE_S, DEFAULT_METRICS_HOST, ServerConfig
from protos.bundle import Bundle
from protos.errors import ServerUnavailableError, SplitInferError
from protos.tls import TLSFiles
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES

# The address ends at a space or, in a JSON log line, at the message's closing quote.
_LISTENING = re.compile(r"listening on ([^\s\"]+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str
    # The last lines the server logged, for the error message if it dies.
    log_tail: deque = field(default_factory=lambda: deque(maxlen=50))

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (the server drains in-flight calls), then SIGKILL after timeout_s; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_server_process(
    config: ServerConfig,
    *,
    cpus: Collection[int] | None = None,
    timeout_s: float = 120.0,
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """`config.port`: 0 for any free one; a fixed one to restart a server where its clients still
    dial. `extra_args` go to `splitinfer serve` as they are (the log format)."""
    cmd = [sys.executable, "-m", "splitinfer", "serve", *serve_args(config), *extra_args]
    # Pinned from here, not by a preexec_fn: that makes Python fork rather than spawn, and gRPC's
    # fork handler then restarts its poller in the child, whose epoll fd close_fds has closed
    # (grpc/grpc#43055: the child dies with "epoll_wait error: Bad file descriptor" when this
    # process has gRPC calls in flight). The child is still starting Python when it is pinned:
    # its threads, created later, inherit the set.
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    if cpus:
        os.sched_setaffinity(process.pid, set(cpus))
    log_tail: deque = deque(maxlen=50)
    deadline = time.monotonic() + timeout_s
    address = None
    while address is None:
        line = process.stderr.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise ServerUnavailableError(f"server did not start ({' | '.join(log_tail) or 'no output'})")
        log_tail.append(line.rstrip())
        match = _LISTENING.search(line)
        address = match.group(1) if match else None

    def drain() -> None:
        # An unread pipe fills up and then blocks the server's logging, and with it the server.
        for rest in process.stderr:
            log_tail.append(rest.rstrip())

    threading.Thread(target=drain, daemon=True).start()
    return ServerProcess(process, address, log_tail)


def serve_args(config: ServerConfig) -> list[str]:
    """The `splitinfer serve` arguments that ask for `config`: its bundles, host and port, and a
    flag for each other option that is not the default."""
    args = [str(b.path if isinstance(b, Bundle) else b) for b in config.bundles]
    args += ["--host", config.host, "--port", str(config.port)]
    if config.max_workers is not None:
        raise SplitInferError(f"max_workers {config.max_workers}: `splitinfer serve` has no flag for it; leave it None")
    if isinstance(config.tokens, Mapping):
        raise SplitInferError("tokens: a server process reads its tokens from a file; give the file's path")
    if isinstance(config.metrics_basic_auth, Mapping):
        raise SplitInferError("metrics_basic_auth: a server process reads its users from a file; give the file's path")
    if config.max_message_bytes % (1 << 20):
        raise SplitInferError(f"max_message_bytes {config.max_message_bytes}: `splitinfer serve` takes whole MiB")
    message_mb = None if config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES else config.max_message_bytes >> 20
    optional = {
        "--threads": config.threads,
        "--max-message-mb": message_mb,
        **_tls_flags("--tls", config.tls),
        "--tokens": config.tokens,
        "--metrics-port": config.metrics_port,
        "--metrics-host": None if config.metrics_host == DEFAULT_METRICS_HOST else config.metrics_host,
        **_tls_flags("--metrics-tls", config.metrics_tls),
        "--metrics-basic-auth": config.metrics_basic_auth,
        "--max-calls-per-client": config.max_calls_per_client,
        "--idle-timeout-s": None if config.idle_timeout_s == DEFAULT_IDLE_TIMEOUT_S else config.idle_timeout_s,
        "--health-port": config.health_port,
        "--grace-s": None if config.grace_s == DEFAULT_GRACE_S else config.grace_s,
    }
    if config.batching != BatchingConfig():
        optional["--batch-window-ms"] = config.batching.window_ms
        optional["--max-batch"] = config.batching.max_batch
        optional["--max-queue"] = config.batching.max_queue
        if config.batching.fixed_window:
            args.append("--fixed-batch-window")
    args += [item for flag, value in optional.items() if value is not None for item in (flag, str(value))]
    if config.reject_non_finite:
        args.append("--reject-non-finite")
    if not config.metrics_client_label:
        args.append("--anonymous-metrics")
    return args + [item for key in config.trust_keys for item in ("--trust-key", str(key))]


def _tls_flags(prefix: str, tls: TLSFiles | None) -> dict[str, object]:
    """`serve`'s three flags of one TLS setting (`--tls` or `--metrics-tls`)."""
    return {
        f"{prefix}-cert": None if tls is None else tls.cert,
        f"{prefix}-key": None if tls is None else tls.key,
        f"{prefix}-client-ca": None if tls is None else tls.ca,
    }


def split_cpus() -> tuple[set[int], set[int]]:
    """(device CPUs, server CPUs) for one machine: the first CPU for the device, the rest for the
    server; both all CPUs when there is only one."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
