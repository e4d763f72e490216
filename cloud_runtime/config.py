"""What a server is asked to do: `ServerConfig`, every option `serve()` takes (the bundles to serve,
where to listen, threads and workers, batching, message limit, TLS, tokens, signing keys, the
metrics and health ports, the grace period of a drain), in one frozen object validated once where
it is built, as onnxruntime's SessionOptions is. A bad value is refused there, before any tail
loads, with a SplitInferError that names the parameter, the value and the rule. Files it names
(certificates, tokens, keys, bundles) are read when the server starts, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.call_limits import DEFAULT_IDLE_TIMEOUT_S
from protos.bundle import Bundle
from protos.errors import SplitInferError
from protos.tls import TLSConfigError, TLSFiles
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_GRACE_S = 5.0
# Metrics name models and clients: they reach a network only when asked for.
DEFAULT_METRICS_HOST = "127.0.0.1"
# gRPC's message limits are C ints.
MAX_MESSAGE_BYTES_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ServerConfig:
    """`bundles`: bundle directories (a multi-cut one serves every cut) or loaded bundles.
    `host`/`port`: where to listen (port 0: a free one; `serve()` returns the port it got).
    `threads`: onnxruntime intra-op threads per tail (None or 0: its default). `max_workers`:
    concurrent calls (None: room for every model's full queue and batch, plus spare workers).
    `batching`: each model's batch window, batch size and queue bound. `max_message_bytes`: the
    largest request or reply, both ways. `tls`: the server's certificate and key, and `ca` to
    require client certificates signed by it (mutual TLS). `tokens`: a tokens file, or token →
    client id; calls without a listed bearer token are refused. `metrics_port`: serve Prometheus
    /metrics there (0: a free port; None: not served) on `metrics_host` (loopback unless given:
    a pod gives 0.0.0.0), over TLS with `metrics_tls`, to scrapers listed in `metrics_basic_auth`
    (a file of `user password` lines, or user → password) when given; `metrics_client_label`:
    False counts every request under client "all" (cloud_runtime.metrics_endpoint, .metrics).
    `health_port`: a plaintext port answering health checks only. `trust_keys`: Ed25519 public
    keys (PEM); when given, a bundle not signed by one of them is refused (protos.signing).
    `grace_s`: how long in-flight calls get to finish once `serve_forever` is told to stop.
    `max_calls_per_client`: calls one authenticated client may have open at once (None: half the
    workers; no limit without tokens, where clients cannot be told apart). `idle_timeout_s`: a call
    waiting longer for a request message (a stream: for its next) is cancelled
    (cloud_runtime.call_limits).
    `reject_non_finite`: refuse (INVALID_ARGUMENT) a request whose float tensors hold NaN or ±inf.
    `web_port`: serve the same service over gRPC-Web and Connect there too, with the same TLS and
    tokens (0: a free port; None: not served; cloud_runtime.web), for browsers; `cors_origins`: the
    origins of pages elsewhere allowed to call it; `web_root`: a directory of static files (the
    demo page) served on it."""

    bundles: tuple[str | Path | Bundle, ...]
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = 0
    threads: int | None = None
    max_workers: int | None = None
    batching: BatchingConfig = BatchingConfig()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    tls: TLSFiles | None = None
    tokens: str | Path | Mapping[str, str] | None = None
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_tls: TLSFiles | None = None
    metrics_basic_auth: str | Path | Mapping[str, str] | None = None
    metrics_client_label: bool = True
    health_port: int | None = None
    trust_keys: tuple[str | Path, ...] = ()
    grace_s: float = DEFAULT_GRACE_S
    max_calls_per_client: int | None = None
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    reject_non_finite: bool = False
    web_port: int | None = None
    cors_origins: tuple[str, ...] = ()
    web_root: str | Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bundles, (str, Path, Bundle)):
            # A lone path would otherwise be taken apart into its characters.
            one = self.bundles.path if isinstance(self.bundles, Bundle) else self.bundles
            raise SplitInferError(f"bundles {str(one)!r} must be a list of bundle directories or bundles, not one")
        # Lists are accepted where they enter and kept as tuples: the config stays immutable.
        object.__setattr__(self, "bundles", tuple(self.bundles))
        object.__setattr__(self, "trust_keys", tuple(self.trust_keys))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if not isinstance(self.host, str) or not self.host:
            raise SplitInferError(f"host {self.host!r} must be a non-empty address to listen on")
        check_port("port", self.port)
        check_port("metrics_port", self.metrics_port)
        check_port("health_port", self.health_port)
        check_port("web_port", self.web_port)
        for origin in self.cors_origins:
            if not (isinstance(origin, str) and (origin == "*" or origin.startswith(("http://", "https://")))):
                raise SplitInferError(f"cors origin {origin!r} must be http(s)://host[:port] or *")
        if (self.cors_origins or self.web_root is not None) and self.web_port is None:
            raise SplitInferError("cors_origins and web_root need a web_port to serve them on")
        if self.web_root is not None and not Path(self.web_root).is_dir():
            raise SplitInferError(f"web_root {str(self.web_root)!r} is not a directory")
        if self.threads is not None and not _is_int(self.threads, 0):
            raise SplitInferError(
                f"threads {self.threads!r} must be an integer of at least 0 (0 or None: onnxruntime's default)"
            )
        if self.max_workers is not None and not _is_int(self.max_workers, 1):
            raise SplitInferError(f"max_workers {self.max_workers} must be at least 1")
        if not isinstance(self.batching, BatchingConfig):
            raise SplitInferError(f"batching {self.batching!r} must be a BatchingConfig")
        if not (_is_int(self.max_message_bytes, 1) and self.max_message_bytes <= MAX_MESSAGE_BYTES_LIMIT):
            raise SplitInferError(
                f"max_message_bytes {self.max_message_bytes!r} is not between 1 and "
                f"{MAX_MESSAGE_BYTES_LIMIT} (gRPC's limit)"
            )
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise SplitInferError(f"metrics_host {self.metrics_host!r} must be a non-empty address to listen on")
        side = (self.metrics_tls, self.metrics_basic_auth)
        if self.metrics_port is None and any(option is not None for option in side):
            raise SplitInferError("metrics_tls and metrics_basic_auth need a metrics_port to serve metrics on")
        if self.metrics_tls is not None and self.metrics_tls.cert is None:
            raise TLSConfigError("metrics TLS needs a certificate and its key (metrics_tls.cert is None)")
        if not isinstance(self.metrics_client_label, bool):
            raise SplitInferError(f"metrics_client_label {self.metrics_client_label!r} is not True or False")
        if self.tls is not None and self.tls.cert is None:
            raise TLSConfigError("server TLS needs a certificate and its key (tls.cert is None)")
        if not isinstance(self.reject_non_finite, bool):
            raise SplitInferError(f"reject_non_finite {self.reject_non_finite!r} is not True or False")
        if not _is_seconds(self.grace_s) or self.grace_s < 0:
            raise SplitInferError(f"grace_s {self.grace_s!r} must be a finite number of seconds, at least 0")
        if self.max_calls_per_client is not None and not _is_int(self.max_calls_per_client, 1):
            raise SplitInferError(f"max_calls_per_client {self.max_calls_per_client!r} must be at least 1")
        if not _is_seconds(self.idle_timeout_s) or self.idle_timeout_s <= 0:
            raise SplitInferError(f"idle_timeout_s {self.idle_timeout_s!r} must be a finite number of seconds, above 0")


def check_port(name: str, port: int | None) -> None:
    """Refuses a port outside 0..65535 (0: any free port; None: not asked for), naming `name`."""
    if port is not None and not (_is_int(port, 0) and port <= 65535):
        raise SplitInferError(f"{name} {port} is not a port: give 1 to 65535, or 0 for any free port")


def _is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object, low: int) -> bool:
    # bool is an int to Python, but True workers or port False is a mistake, not a number.
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
