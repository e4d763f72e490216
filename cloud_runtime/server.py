"""Starting and stopping a splitinfer server: `serve()` binds, starts and returns the running
server (with the port it got, so tests can ask for port 0); `serve_forever()` is the CLI's loop,
which drains in-flight requests on SIGTERM/SIGINT before it returns.

What to serve and how is one `ServerConfig` (cloud_runtime.config), checked before anything
starts. Each model's requests wait in a bounded queue and run in batches (`config.batching`, see
cloud_runtime.batch_queue). A sync gRPC server holds a worker thread per call, so the pool is sized
for every request the queues may hold plus the batches running, and gRPC refuses calls beyond it
(RESOURCE_EXHAUSTED) instead of parking them in its executor's unbounded queue: memory stays
bounded by the pool size times the largest message.

Beside splitinfer.v1.SplitInference a server answers the stock grpc.health.v1 (SERVING once the
tails are loaded, NOT_SERVING from the moment shutdown starts) and server reflection, so stock
tools (grpc_health_probe, grpcurl, Kubernetes `grpc:` probes) work. Optional, each off unless
asked for: TLS or mutual TLS, per-client bearer tokens, Prometheus metrics over HTTP, and a
plaintext port that answers health checks only (for probes that speak neither TLS nor tokens).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cloud_runtime.auth import TokenAuthInterceptor, load_tokens
from cloud_runtime.call_limits import CallLimits
from cloud_runtime.config import DEFAULT_GRACE_S, ServerConfig
from cloud_runtime.metrics import ServerMetrics
from cloud_runtime.metrics_endpoint import MetricsEndpoint, load_basic_auth, serve_metrics
from cloud_runtime.saturation import Saturation
from cloud_runtime.servicer import SplitInferenceServicer, add_to_server
from cloud_runtime.tails import TailService
from protos.bundle import Bundle, load_bundles
from protos.errors import ServerUnavailableError, SplitInferError
from protos.signing import load_trusted_keys, verify_bundle_signature
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.tls import TLSConfigError, TLSFiles

if TYPE_CHECKING:
    from cloud_runtime.web import WebEndpoint

log = logging.getLogger(__name__)

# Workers beyond the queues' needs: ListModels, streams (each holds a worker while open), reflection.
SPARE_WORKERS = 16
# Clients may ping this often during calls (EdgeClient's keepalive); gRPC's default of 5 minutes
# would answer their pings with GOAWAY (too_many_pings) on a long call.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class RunningServer:
    """A started server and the port it is bound to; a context manager that stops it on exit."""

    server: grpc.Server
    tails: TailService
    host: str
    port: int
    health: health.HealthServicer | None = None
    metrics: ServerMetrics | None = None
    # Set when asked for: /metrics over HTTP, and the plaintext health-only server.
    metrics_endpoint: MetricsEndpoint | None = None
    health_server: grpc.Server | None = None
    health_port: int | None = None
    tls: str = "off"  # "off", "tls" or "mutual"
    auth_clients: int = 0  # clients in the tokens file; 0: no auth
    # gRPC-Web and Connect for browsers (cloud_runtime.web), when asked for.
    web: WebEndpoint | None = None
    call_limits: CallLimits | None = None
    # The largest request or reply it takes (message_limit of the bundles it started with).
    message_limit: int = 0

    @property
    def web_port(self) -> int | None:
        return None if self.web is None else self.web.port

    @property
    def address(self) -> str:
        return _join(self.host, self.port)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_endpoint is None else self.metrics_endpoint.port

    def shutdown(self, grace_s: float | None = DEFAULT_GRACE_S) -> threading.Event:
        """Starts stopping without waiting: health turns NOT_SERVING (so a load balancer stops
        sending), new calls are refused, in-flight ones get grace_s to finish. Set once stopped."""
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if self.web is not None:
            self.web.shutdown()
        return self.server.stop(grace_s)

    def stop(self, grace_s: float | None = DEFAULT_GRACE_S) -> None:
        """Refuses new calls, lets in-flight ones finish for up to grace_s, and returns once stopped."""
        if self.web is not None:
            # Its calls run through the same tails: closed first, it waits for them to be answered.
            self.web.close()
        self.shutdown(grace_s).wait()
        # After the drain: in-flight calls needed the batching threads until they were answered.
        self.tails.close()
        # Last, so probes and scrapes see the drain (NOT_SERVING, in-flight requests) to its end.
        if self.health_server is not None:
            self.health_server.stop(None).wait()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.call_limits is not None:
            self.call_limits.close()

    def wait(self) -> None:
        self.server.wait_for_termination()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(config: ServerConfig) -> RunningServer:
    """Serves the tails of `config.bundles` on config.host:config.port; returns once it is
    listening, with the port it got (config.port 0: a free one)."""
    # Configuration errors first, before the tails take their time to load.
    credentials = _server_credentials(config.tls) if config.tls is not None else None
    tokens = config.tokens
    clients = tokens if tokens is None or isinstance(tokens, Mapping) else load_tokens(tokens)
    metrics_users = config.metrics_basic_auth
    if metrics_users is not None and not isinstance(metrics_users, Mapping):
        metrics_users = load_basic_auth(metrics_users)
    serve_web = _web_port_server() if config.web_port is not None else None
    loaded = load_served_bundles(config)
    served: dict[str, list[str]] = {}
    for bundle in loaded:
        served.setdefault(bundle.manifest.model_id, []).append(bundle.manifest.bundle_hash)
    metrics = ServerMetrics(served, client_label=config.metrics_client_label)
    health_servicer = health.HealthServicer()
    saturation = Saturation(health_servicer, ("", SERVICE_NAME), config.batching.max_queue, metrics)
    try:
        tails = TailService(
            loaded,
            threads=config.threads,
            batching=config.batching,
            observer=saturation,
            reject_non_finite=config.reject_non_finite,
        )
    except Exception:
        metrics.close()
        raise
    servicer = SplitInferenceServicer(tails, metrics)
    limit = message_limit(loaded, config.max_message_bytes)
    server, limits = _grpc_server(
        config, servicer, metrics, clients, saturation, health_servicer, models=len(served), message_bytes=limit
    )
    web, started = None, None
    try:
        bound_port = _bind(server, config.host, config.port, credentials)
        started = _start_side_servers(config, metrics, metrics_users, health_servicer)
        if serve_web is not None:
            web = _serve_web(serve_web, config, servicer, metrics, clients, tails, limit)
    except Exception:
        if started is not None:
            started.close()
        server.stop(None)
        tails.close()
        metrics.close()
        limits.close()
        raise
    server.start()
    # The tails were loaded above: from here on every served model can be answered, while its
    # queue has room (cloud_runtime.saturation).
    saturation.start()
    tls = config.tls
    return RunningServer(
        server,
        tails,
        config.host,
        bound_port,
        health=health_servicer,
        metrics=metrics,
        metrics_endpoint=started.metrics_endpoint,
        health_server=started.health_server,
        health_port=started.health_port,
        tls="off" if tls is None else "mutual" if tls.ca is not None else "tls",
        auth_clients=0 if clients is None else len(set(clients.values())),
        web=web,
        call_limits=limits,
        message_limit=limit,
    )


def serve_forever(config: ServerConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains for config.grace_s; call from the main thread
    (signal handlers live there)."""
    running = serve(config)
    grace_s = config.grace_s
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # An orchestrator sends SIGTERM before it kills the process: refusing new calls while the
        # in-flight ones finish means no device loses a request it already sent. A second signal
        # means the operator will not wait.
        nonlocal signals_seen
        signals_seen += 1
        log.info("%s: stopping (grace %.1f s)", signal.Signals(signum).name, grace_s if signals_seen == 1 else 0.0)
        running.shutdown(grace_s if signals_seen == 1 else 0)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP: new versions in the bundle directories are served beside the old (devices update
    # to the newest over the air), loaded on a thread of their own while requests go on.
    reloading = threading.Lock()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=_reload, args=(reloading, running, config), name="bundle-reload", daemon=True).start()

    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_reload)
    try:
        auth = f"tokens of {running.auth_clients} client(s)" if running.auth_clients else "none"
        log.info("splitinfer server listening on %s (tls: %s, auth: %s)", running.address, running.tls, auth)
        if running.call_limits is not None:
            workers, largest = running.call_limits.max_workers, running.message_limit
            # What an orchestrator's memory limit must hold beside the models (deploy/k8s/deployment.yaml).
            log.info(
                "requests in memory: at most %d calls × %.1f MiB = %.0f MiB",
                workers,
                largest / (1 << 20),
                workers * largest / (1 << 20),
            )
        if running.metrics_endpoint is not None:
            scheme = "http" if config.metrics_tls is None else "https"
            where = _join(config.metrics_host, running.metrics_endpoint.port)
            log.info("metrics on %s://%s/metrics", scheme, where)
        if running.health_port is not None:
            log.info("health checks (plaintext) on %s", _join(running.host, running.health_port))
        if running.web_port is not None:
            scheme = "http" if running.tls == "off" else "https"
            log.info("gRPC-Web and Connect on %s://%s/", scheme, _join(running.host, running.web_port))
        running.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        running.stop(0)
    log.info("server stopped")


def publish_new_versions(running: RunningServer, config: ServerConfig) -> list[Bundle]:
    """Reads config.bundles again (signatures checked as at start) and serves each bundle found
    there that is not served yet, a new version of a served model, beside those served: the tails
    of the old versions stay in memory for the devices still on them. A bundle that cannot be
    served (another model, a larger message than the server's limit) is logged and skipped; the
    server goes on as it was. Returns the bundles published."""
    try:
        found = load_served_bundles(config)
    except SplitInferError as err:
        log.error("bundles not reloaded: %s; serving as before", err)
        return []
    limit = running.message_limit
    published = []
    for bundle in found:
        manifest = bundle.manifest
        if manifest.bundle_hash in running.tails.served.get(manifest.model_id, ()):
            continue
        try:
            if message_limit([bundle], config.max_message_bytes) > limit:
                raise SplitInferError(
                    f"bundle {str(bundle.path)!r} needs messages larger than the server's limit of {limit} bytes: "
                    "restart the server to serve it"
                )
            running.tails.publish(bundle)
        except SplitInferError as err:
            log.error("bundle %s not published: %s", bundle.path, err)
            continue
        published.append(bundle)
    log.info("bundles reloaded: %d new version(s) published", len(published))
    return published


def _reload(reloading: threading.Lock, running: RunningServer, config: ServerConfig) -> None:
    """One SIGHUP's reload, after any still under way (each reads the directories as they are then)."""
    with reloading:
        publish_new_versions(running, config)


def load_served_bundles(config: ServerConfig) -> list[Bundle]:
    """The bundles to serve, every cut of a multi-cut directory; when config.trust_keys are given,
    each directory must carry a signature by one of them (refused otherwise)."""
    trusted = load_trusted_keys(config.trust_keys) if config.trust_keys else ()
    for b in config.bundles if trusted else ():
        where = b.path if isinstance(b, Bundle) else b
        signer = verify_bundle_signature(where, trusted)
        log.info("bundle %s: signed by trusted key %s (%s)", where, signer.key_id, signer.path)
    # A multi-cut bundle directory serves every one of its cuts, each under its own bundle_hash.
    return [one for b in config.bundles for one in ((b,) if isinstance(b, Bundle) else load_bundles(b))]


# Room beside the tensors' data for protobuf framing and the request's other fields (ids and names,
# which the servicer bounds in what it logs and answers, not in what it receives).
_MESSAGE_OVERHEAD_BYTES = 1 << 20


def message_limit(bundles: Iterable[Bundle], ceiling: int) -> int:
    """The largest message the served bundles need, within `ceiling`: twice the bytes of the
    largest cut or output sent raw as fp32 (one request carries one sample), plus framing. A
    bundle with a dimension of any size (-1) needs the ceiling."""
    largest = 0
    for bundle in bundles:
        for specs in (bundle.manifest.cut, bundle.manifest.outputs):
            if any(-1 in spec.shape for spec in specs):
                return ceiling
            largest = max(largest, sum(int(np.prod(spec.shape)) * 4 for spec in specs))
    return min(ceiling, 2 * largest + _MESSAGE_OVERHEAD_BYTES)


def default_workers(config: ServerConfig, models: int) -> int:
    """Calls a server takes at once unless told: room for every model's full queue and its running
    batch, and spare workers for streams, ListModels and reflection."""
    return models * (config.batching.max_queue + config.batching.max_batch) + SPARE_WORKERS


def streams_per_connection(max_workers: int) -> int:
    """The calls one connection may have open at once: a quarter of the workers (at least 4)."""
    return max(4, max_workers // 4)


def calls_per_client(config: ServerConfig, max_workers: int) -> int | None:
    """The calls one authenticated client may have open: as configured, else half the workers
    (another client always finds room). None when there are no tokens to tell clients apart."""
    if config.tokens is None:
        return None
    return config.max_calls_per_client or max(1, max_workers // 2)


def _web_port_server() -> Callable[..., WebEndpoint]:
    """cloud_runtime.web.serve_web, imported only when asked for: its libraries are the `web` extra's."""
    try:
        from cloud_runtime.web import serve_web
    except ImportError as err:
        raise SplitInferError(
            f"the web port needs the web extra (pip install 'splitinfer[web]'): cannot import {err.name}"
        ) from err
    return serve_web


def _serve_web(
    serve_web: Callable[..., WebEndpoint],
    config: ServerConfig,
    servicer: SplitInferenceServicer,
    metrics: ServerMetrics,
    clients: Mapping[str, str] | None,
    tails: TailService,
    message_bytes: int,
) -> WebEndpoint:
    return serve_web(
        (servicer, metrics, clients),
        tails.bundles,
        host=config.host,
        port=config.web_port,
        # As the native server's pool: room for every queued request, and calls beyond it wait.
        workers=default_workers(config, len({b.manifest.model_id for b in tails.bundles})),
        read_max_bytes=message_bytes,
        tls=config.tls,
        cors_origins=config.cors_origins,
        web_root=None if config.web_root is None else Path(config.web_root),
    )


def _grpc_server(
    config: ServerConfig,
    servicer: SplitInferenceServicer,
    metrics: ServerMetrics,
    clients: Mapping[str, str] | None,
    saturation: Saturation,
    health_servicer: health.HealthServicer,
    *,
    models: int,
    message_bytes: int,
) -> tuple[grpc.Server, CallLimits]:
    """The main server, not yet bound: the servicer, health (NOT_SERVING until started) and
    reflection, behind the token check when there are tokens and the call limits."""
    max_workers = config.max_workers if config.max_workers is not None else default_workers(config, models)
    interceptors: list[grpc.ServerInterceptor] = []
    if clients is not None:
        if config.tls is None:
            # Allowed (a mesh may encrypt the hop), but whoever sees the traffic can replay a token.
            log.warning("tokens without TLS: every call's token crosses the network in clear text")
        refused = metrics.auth_failures
        interceptors.append(TokenAuthInterceptor(clients, on_refused=lambda reason: refused.labels(reason).inc()))
    # After the token check: a refused call is answered from its metadata and never counted.
    limits = CallLimits(
        max_workers=max_workers,
        max_calls_per_client=calls_per_client(config, max_workers),
        idle_timeout_s=config.idle_timeout_s,
        on_saturated=saturation.calls_saturated,
    )
    interceptors.append(limits)
    options = [
        # gRPC's default 4 MB receive limit is below an early-cut activation of a large input (raw
        # fp32); the limit is what the served bundles' largest request or reply needs, within the
        # configured ceiling. A larger message is refused RESOURCE_EXHAUSTED from its length
        # prefix, before it is buffered: the server's memory is bounded by its calls × this.
        ("grpc.max_receive_message_length", message_bytes),
        ("grpc.max_send_message_length", message_bytes),
        # gRPC sets SO_REUSEPORT on Linux by default: a second server on a busy port would start
        # "successfully" and take half the traffic. Binding must fail instead.
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        # One connection may not hold every worker: its calls beyond this wait at the client
        # (HTTP/2's own limit on concurrent streams) while other connections are served.
        ("grpc.max_concurrent_streams", streams_per_connection(max_workers)),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        options=options,
        interceptors=interceptors,
        # One worker per call: a call beyond the pool is refused, never parked in the executor.
        maximum_concurrent_rpcs=max_workers,
    )
    add_to_server(servicer, server)
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, _NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, limits


@dataclass(frozen=True)
class _SideServers:
    metrics_endpoint: MetricsEndpoint | None
    health_server: grpc.Server | None
    health_port: int | None

    def close(self) -> None:
        if self.health_server is not None:
            self.health_server.stop(None)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()


def _start_side_servers(
    config: ServerConfig,
    metrics: ServerMetrics,
    metrics_users: Mapping[str, str] | None,
    health_servicer: health.HealthServicer,
) -> _SideServers:
    """Starts what was asked for beside the main server: /metrics over HTTP, the plaintext
    health-only server. Stops what it started if one of them cannot listen."""
    endpoint = None
    try:
        if config.metrics_port is not None:
            endpoint = serve_metrics(
                metrics.registry,
                config.metrics_host,
                config.metrics_port,
                tls=config.metrics_tls,
                basic_auth=metrics_users,
            )
        if config.health_port is None:
            return _SideServers(endpoint, None, None)
        # Its own small pool: a probe must be answered even while every worker of the main
        # server is busy with a long tail, or an orchestrator restarts a server that is only busy.
        health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, config.host, config.health_port, None)
        health_server.start()
        return _SideServers(endpoint, health_server, health_port)
    except Exception:
        if endpoint is not None:
            endpoint.close()
        raise


def _server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    material = tls.load(role="server")
    credentials = grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca,
        # With a client CA, a client without a certificate signed by it is refused at the handshake.
        require_client_auth=material.ca is not None,
    )
    # gRPC checks the pair only when a port is added, and then reports it as a failure to bind.
    # A throwaway server on a loopback port tells the two apart.
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        probe.add_secure_port("127.0.0.1:0", credentials)
    except RuntimeError as err:
        raise TLSConfigError(
            f"server TLS certificate {str(tls.cert)!r} and key {str(tls.key)!r} are refused by gRPC "
            "(is the key the certificate's?)"
        ) from err
    finally:
        probe.stop(None)
    return credentials


def _bind(server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    address = _join(host, port)
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as err:
        # gRPC's reason goes to its native log (GRPC_VERBOSITY), its exception only points there.
        raise ServerUnavailableError(
            f"cannot listen on {address}: the port is in use, or {host!r} is not an address of this machine "
            "(gRPC's own reason: its log, GRPC_VERBOSITY=error, or `splitinfer --verbose`)"
        ) from err


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
