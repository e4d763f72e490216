"""The browser's front door: splitinfer.v1.SplitInference over gRPC-Web and Connect, beside the
native gRPC server, on a port of its own (`ServerConfig.web_port`).

A browser cannot speak native gRPC (it has no access to HTTP/2 trailers), so a web page calls
through gRPC-Web or Connect, both plain HTTP/1.1 POSTs. The framing of both protocols is
connectrpc's (`ConnectASGIApplication`, the Connect project's Python runtime, which also
answers gRPC itself over HTTP/2 where the ASGI server speaks it); uvicorn serves it on a thread of
this process. Each call runs the servicer's own core (`SplitInferenceServicer.handle`), so a web
call is decoded, batched, refused, logged and counted exactly as a native one, with the same
status codes and messages and the same `retry-after-ms` trailer. Tokens and TLS are those of the
native port: the same tokens file (checked by `TokenAuthInterceptor.authenticate`), the same
certificate, and a client CA required of every client when mutual TLS is on.

Only the unary methods, Infer and ListModels, are served: a browser's fetch cannot stream a
request body, so InferStream needs the native port.

Beside the RPCs the same port serves each served bundle's manifest, its signature when signed,
and head (GET /bundles/<bundle_hash>/<file>), so a page can load and verify the head it runs, and,
when asked for, static files (`web_root`, the demo page) and then the tails too; cross-origin pages
listed in `cors_origins` may call it.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cloud_runtime.auth import CLIENT_ID, TokenAuthInterceptor
from cloud_runtime.metrics import ServerMetrics
from cloud_runtime.servicer import MalformedRequest, SplitInferenceServicer, lenient_parser
from protos.bundle import MANIFEST, SEGMENTED_HEAD, Bundle
from protos.errors import ServerUnavailableError
from protos.signing import SIGNATURE_FILE
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.tls import TLSFiles

# The head segments of a multi-cut bundle (protos.bundle: head-NN.onnx).
SEGMENT_FILES = "head-*.onnx"

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
# What a cross-origin page sends and must be allowed to read: the protocols' own headers, the
# bearer token, and the retry hint of a refusal.
CORS_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
)
# (Connect sends a unary call's trailers as headers prefixed "trailer-".)
CORS_EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after-ms",
    "trailer-retry-after-ms",
)
_STARTUP_TIMEOUT_S = 10.0
# gRPC status → the Connect code of the same meaning (the same codes; Connect spells one CANCELED).
_CODES = {
    status: Code["CANCELED" if status.name == "CANCELLED" else status.name]
    for status in grpc.StatusCode
    if status != grpc.StatusCode.OK
}


class _CallContext:
    """The part of grpc.ServicerContext the servicer's core uses, over a Connect call."""

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx

    def time_remaining(self) -> float | None:
        remaining_ms = self._ctx.timeout_ms
        return None if remaining_ms is None else max(remaining_ms, 0.0) / 1e3

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            self._ctx.response_trailers[key] = value


class _TolerantProtoCodec:
    """Connect's binary codec with the native port's parsers: bytes that are not a valid message
    reach the servicer as `MalformedRequest`, answered INVALID_ARGUMENT saying so, and logged and
    counted like every other request, instead of being refused before the servicer sees them."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message | MalformedRequest:
        return lenient_parser(message_class)(bytes(data))


class _SplitInferenceWeb(ConnectASGIApplication):
    @property
    def path(self) -> str:
        return f"/{SERVICE_NAME}"


def _method(name: str, request: type, response: type, idempotency: IdempotencyLevel) -> MethodInfo:
    return MethodInfo(
        name=name,
        service_name=SERVICE_NAME,
        input=request,
        output=response,
        idempotency_level=idempotency,
        stream_type=StreamType.UNARY,
    )


class WebService:
    """Infer and ListModels as Connect endpoints, each run on `pool` through the servicer."""

    def __init__(
        self,
        servicer: SplitInferenceServicer,
        pool: futures.Executor,
        auth: TokenAuthInterceptor | None,
        metrics: ServerMetrics | None,
    ) -> None:
        self._servicer, self._pool, self._auth, self._metrics = servicer, pool, auth, metrics

    def endpoints(self) -> dict[str, Endpoint]:
        infer = _method("Infer", pb.InferRequest, pb.InferResponse, IdempotencyLevel.UNKNOWN)
        models = _method("ListModels", pb.ListModelsRequest, pb.ListModelsResponse, IdempotencyLevel.NO_SIDE_EFFECTS)
        return {
            f"/{SERVICE_NAME}/Infer": Endpoint.unary(infer, self.infer),
            f"/{SERVICE_NAME}/ListModels": Endpoint.unary(models, self.list_models),
        }

    async def infer(self, request: pb.InferRequest | MalformedRequest, ctx: RequestContext) -> pb.InferResponse:
        self._authenticate(ctx.request_headers.getall("authorization"))
        call = _CallContext(ctx)
        response, code, message = await self._run(self._servicer.handle, request, call, "Infer")
        if response is None:
            raise ConnectError(_CODES[code], message)
        return response

    async def list_models(
        self, request: pb.ListModelsRequest | MalformedRequest, ctx: RequestContext
    ) -> pb.ListModelsResponse:
        self._authenticate(ctx.request_headers.getall("authorization"))
        if isinstance(request, MalformedRequest):
            raise ConnectError(Code.INVALID_ARGUMENT, request.error)
        return await self._run(self._servicer.tails.list_models)

    def check_token(self, values: Sequence[str]) -> str | None:
        """None for a call the server accepts (no tokens, or a good one), else why not."""
        if self._auth is None:
            return None
        client, reason, message = self._auth.authenticate([("authorization", v) for v in values])
        if client is None:
            if self._metrics is not None:
                self._metrics.auth_failures.labels(reason).inc()
            return message
        CLIENT_ID.set(client)
        return None

    def _authenticate(self, values: Sequence[str]) -> None:
        refused = self.check_token(values)
        if refused is not None:
            raise ConnectError(Code.UNAUTHENTICATED, refused)

    async def _run(self, function: Any, *args: Any) -> Any:
        # The tails block (a batch runs for milliseconds to seconds): on a worker, never the event
        # loop; in this call's context, so the client id set above reaches the access log.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, context.run, function, *args)


def _bundle_routes(service: WebService, bundles: Sequence[Bundle], *, with_tails: bool) -> list[Route]:
    """GET /bundles/<bundle_hash>/<file>: the manifest, its signature (when signed, so that a page
    given trusted keys verifies it) and head of each served bundle, and with
    `with_tails` (a page is served, such as the demo, which checks the server's answer against a
    run of its own) the tail: the server's half of the model, otherwise not handed out."""
    files: dict[tuple[str, str], Path] = {}
    for bundle in bundles:
        # A cut of a multi-cut bundle: its head is the bundle's segments (and its manifest the
        # multi-cut one), every one of which the device holds.
        segmented = bundle.manifest.head_file == SEGMENTED_HEAD
        heads = sorted(bundle.path.glob(SEGMENT_FILES)) if segmented else [bundle.head_path]
        wanted = [
            bundle.path / MANIFEST,
            bundle.path / SIGNATURE_FILE,
            *heads,
            bundle.tail_path if with_tails else None,
        ]
        for path in (p for p in wanted if p is not None and p.is_file()):
            files[(bundle.manifest.bundle_hash, path.name)] = path

    async def bundle_file(request: Request) -> Response:
        refused = service.check_token(request.headers.getlist("authorization"))
        if refused is not None:
            return JSONResponse({"error": refused}, status_code=401)
        path = files.get((request.path_params["bundle_hash"], request.path_params["name"]))
        if path is None:
            return JSONResponse({"error": "no such file of a served bundle"}, status_code=404)
        return FileResponse(path)

    return [Route("/bundles/{bundle_hash}/{name}", bundle_file, methods=["GET"])]


def web_app(
    service: WebService,
    bundles: Sequence[Bundle],
    *,
    read_max_bytes: int,
    cors_origins: Sequence[str] = (),
    web_root: Path | None = None,
) -> Starlette:
    """The ASGI application of the web port: the RPCs, the bundles' files, the static page."""
    rpc = _SplitInferenceWeb(
        service=service,
        endpoints=lambda svc: svc.endpoints(),
        read_max_bytes=read_max_bytes,
        # JSON too (Connect's other encoding), by connectrpc's own codec for google.protobuf.
        codecs=[_TolerantProtoCodec(), google_protobuf_json_codec()],
    )
    routes: list[Any] = [
        Mount(f"/{SERVICE_NAME}", app=rpc),
        *_bundle_routes(service, bundles, with_tails=web_root is not None),
    ]
    if web_root is not None:
        routes.append(Mount("/", app=StaticFiles(directory=web_root, html=True)))
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=list(CORS_REQUEST_HEADERS),
                expose_headers=list(CORS_EXPOSED_HEADERS),
            )
        )
    return Starlette(routes=routes, middleware=middleware)


@dataclass
class WebEndpoint:
    """The running web port: uvicorn on a thread of its own; `close()` stops it."""

    port: int
    _server: uvicorn.Server
    _thread: threading.Thread
    _pool: futures.ThreadPoolExecutor

    def shutdown(self) -> None:
        """Stops accepting connections; calls in flight go on to their answers."""
        self._server.should_exit = True

    def close(self) -> None:
        self.shutdown()
        self._thread.join()
        self._pool.shutdown(wait=True)


def serve_web(
    service_parts: tuple[SplitInferenceServicer, ServerMetrics | None, Mapping[str, str] | None],
    bundles: Sequence[Bundle],
    *,
    host: str,
    port: int,
    workers: int,
    read_max_bytes: int,
    tls: TLSFiles | None = None,
    cors_origins: Sequence[str] = (),
    web_root: Path | None = None,
) -> WebEndpoint:
    """Starts the web port on host:port (0: a free one) and returns once it is listening."""
    servicer, metrics, clients = service_parts
    sock = _listen(host, port)
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="web-worker")
    auth = None
    if clients is not None:
        auth = TokenAuthInterceptor(clients)
    service = WebService(servicer, pool, auth, metrics)
    app = web_app(service, bundles, read_max_bytes=read_max_bytes, cors_origins=cors_origins, web_root=web_root)
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        # As the native server's call limit: a call beyond the workers is refused at once (HTTP
        # 503, which gRPC-Web and Connect clients read as UNAVAILABLE and retry), never parked in
        # the pool's unbounded queue with its message in memory.
        limit_concurrency=workers,
        **_tls_options(tls),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web-port", daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join()
        pool.shutdown(wait=False)
        sock.close()
        raise ServerUnavailableError(f"the web port on {host}:{port} did not start (see the log)")
    return WebEndpoint(sock.getsockname()[1], server, thread, pool)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a busy port fails at once, naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ServerUnavailableError(f"cannot listen on {where} (web port): {err.strerror or err}") from err
    return sock


def _tls_options(tls: TLSFiles | None) -> dict[str, Any]:
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if tls.ca is not None:
        options.update(ssl_ca_certs=str(tls.ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options
