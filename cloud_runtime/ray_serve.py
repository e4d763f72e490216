"""The tails on Ray Serve, for a deployment that outgrows one machine: gRPC ingress speaking
splitinfer.v1.SplitInference, requests batched by `serve.batch`, replicas autoscaled on the
requests they hold.

Ray Serve's gRPC proxy receives the calls and hands each to a replica's method of the same name
(the last part of the call's path); the proxy registers the service with the native server's
parsers (`cloud_runtime.servicer.add_to_server`), so bytes that are not a request reach the
replica as a MalformedRequest and are answered INVALID_ARGUMENT, not INTERNAL. A replica holds a
`TailService` whose own queues are off (window 0, batches of 1): here Ray batches, and
`TailService.infer_batch` checks, decodes and runs each batch, sharing a tail call among the
requests that can (same bundle, a batchable tail, same shapes). A refused request gets its own
status and message, as from `splitinfer serve`.

What a replica answers, as `splitinfer serve` does: `Infer`; `InferStream` (Serve's bidirectional
streaming: the replica pulls each message from the proxy, its request joins the unary ones'
batches, a failure is answered in-band); `ListModels`; `FetchBundleFile` (updates over the air);
and grpc.health.v1 `Check` for "" and splitinfer.v1.SplitInference, SERVING from the replica once
its tails are loaded (`Watch` is not routed: a long-lived call would hold a replica's slot and
count as load, so gRPC's client-side health checking, which uses Watch, finds it UNIMPLEMENTED
and treats the proxy as healthy). The proxy's own health is Ray's
/ray.serve.RayServeAPIService/Healthz (and HTTP /-/healthz); reflection is the proxy's too.

Tokens: with `tokens` (a tokens file every replica can read) each replica checks the call's
`authorization` metadata, which the proxy forwards in the call's context, with the native
server's check (cloud_runtime.auth), refusing UNAUTHENTICATED with its messages; health checks
stay open. TLS: Ray's proxy listens in plaintext only (it has no option for a certificate), so
TLS ends in a gateway in front of it (deploy/README.md).

Routing: with several Serve applications Ray picks one by the call metadata `application: NAME`
(EdgeConfig(metadata={"application": NAME}), `splitinfer run --metadata application=NAME`); alone,
an application gets every call.

    ray start --head; serve deploy deploy/ray/serve.yaml     # or: serve run deploy/ray/serve.yaml
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext, gRPCInputStream

from cloud_runtime.auth import TokenAuthInterceptor, load_tokens
from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import load_served_bundles
from cloud_runtime.servicer import MalformedRequest, MalformedRequestError, bounded, requested_chunks
from cloud_runtime.tails import TailService
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

# What Serve's gRPC proxy registers (its `grpc_servicer_functions`): the service with the native
# server's lenient parsers, and the health check.
GRPC_SERVICER_FUNCTIONS = [
    "cloud_runtime.servicer.add_to_server",
    "cloud_runtime.ray_serve.add_health_check_to_server",
]
DEFAULT_MAX_BATCH = 32
DEFAULT_WINDOW_S = 0.002
# Scale out when a replica holds more requests than a batch: they would wait a batch or more.
AUTOSCALING = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": DEFAULT_MAX_BATCH}
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The services whose health a replica answers, as the native server does.
HEALTH_CHECKED = ("", pb.DESCRIPTOR.services_by_name["SplitInference"].full_name)


class UnauthenticatedError(SplitInferError):
    """A call without a good token (its message says what was wrong, never the token)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


def add_health_check_to_server(servicer: Any, server: grpc.Server) -> None:
    """Registers grpc.health.v1.Health's `Check` alone on Serve's proxy (see the module's doc on Watch)."""
    check = grpc.unary_unary_rpc_method_handler(
        servicer.Check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": check}),))


@serve.deployment(autoscaling_config=AUTOSCALING, max_ongoing_requests=4 * DEFAULT_MAX_BATCH)
class TailDeployment:
    """Serves the tails of `config.bundles` (directories every replica can read) with its
    `threads`, `trust_keys`, `tokens` and `batching` (window and batch size; Ray's own queue holds
    the waiting requests, so `max_queue` is not used); where to listen is the ingress's business."""

    def __init__(self, config: ServerConfig) -> None:
        # Signatures and tokens are read here, where the replica runs, not where the app was built.
        loaded = load_served_bundles(config)
        self.tails = TailService(loaded, threads=config.threads, batching=BatchingConfig(window_ms=0, max_batch=1))
        self._batch.set_max_batch_size(config.batching.max_batch)
        self._batch.set_batch_wait_timeout_s(config.batching.window_ms / 1e3)
        tokens = config.tokens
        clients = tokens if tokens is None or isinstance(tokens, Mapping) else load_tokens(tokens)
        self._auth = TokenAuthInterceptor(clients) if clients is not None else None

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WINDOW_S)
    async def _batch(self, requests: list[pb.InferRequest]) -> list[pb.InferResponse | SplitInferError]:
        # The tail is CPU work that releases the GIL: off the replica's event loop, which keeps
        # taking the next batch's requests meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self.tails.infer_batch, requests)

    async def _answer(self, request: pb.InferRequest | MalformedRequest) -> pb.InferResponse | SplitInferError:
        if isinstance(request, MalformedRequest):
            return MalformedRequestError(request.error)
        return await self._batch(request)

    def _refusal(self, grpc_context: RayServegRPCContext, method: str) -> UnauthenticatedError | None:
        """Why the call may not go on (its status set on `grpc_context`), None when it may."""
        if self._auth is None:
            return None
        client, _, message = self._auth.authenticate(grpc_context.invocation_metadata())
        if client is not None:
            return None
        log.warning("refused %s from %s: %s", method, grpc_context.peer(), message)
        grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        grpc_context.set_details(message)
        return UnauthenticatedError(message)

    async def Infer(
        self, request: pb.InferRequest | MalformedRequest, grpc_context: RayServegRPCContext
    ) -> pb.InferResponse:
        if self._refusal(grpc_context, "Infer") is not None:
            return pb.InferResponse()
        outcome = await self._answer(request)
        if isinstance(outcome, SplitInferError):
            grpc_context.set_code(outcome.status_code)
            grpc_context.set_details(bounded(str(outcome)))
            return pb.InferResponse(request_id=getattr(request, "request_id", ""))
        return outcome

    async def InferStream(
        self, requests: gRPCInputStream, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.InferResponse]:
        refusal = self._refusal(grpc_context, "InferStream")
        if refusal is not None:
            # Serve sends a stream's status with its replies, and a refused one has none: raised,
            # the proxy answers with the status set on the context.
            raise refusal
        async for request in requests:
            outcome = await self._answer(request)
            if isinstance(outcome, SplitInferError):
                error = pb.Error(code=outcome.status_code.value[0], message=bounded(str(outcome)))
                yield pb.InferResponse(request_id=getattr(request, "request_id", ""), error=error)
            else:
                yield outcome

    async def ListModels(
        self, request: pb.ListModelsRequest | MalformedRequest, grpc_context: RayServegRPCContext
    ) -> pb.ListModelsResponse:
        if self._refusal(grpc_context, "ListModels") is not None:
            return pb.ListModelsResponse()
        if isinstance(request, MalformedRequest):
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(bounded(request.error))
            return pb.ListModelsResponse()
        return self.tails.list_models()

    async def FetchBundleFile(
        self, request: pb.FetchBundleFileRequest | MalformedRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.FileChunk]:
        """One file of a served bundle in chunks (cloud_runtime.bundle_files); a refusal is the
        call's status, before any chunk."""
        refusal = self._refusal(grpc_context, "FetchBundleFile")
        if refusal is not None:
            raise refusal
        try:
            chunks = requested_chunks(self.tails, request)
        except SplitInferError as err:
            grpc_context.set_code(err.status_code)
            grpc_context.set_details(bounded(str(err)))
            raise
        for chunk in chunks:
            yield chunk

    async def Check(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        """SERVING: a replica answers once its tails are loaded (grpc.health.v1, open to probes)."""
        if request.service not in HEALTH_CHECKED:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}; health is answered for {HEALTH_CHECKED}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def server_config(args: dict[str, Any]) -> ServerConfig:
    """The replicas' ServerConfig from the application's arguments (`app`)."""
    bundles, trust_keys = _paths(args, "bundles"), _paths(args, "trust_keys")
    if not bundles:
        raise SplitInferError("the Ray Serve app needs `bundles`: the bundle directories to serve")
    threads = _number(args, "threads", int, None, 1, 1024)
    max_batch = _number(args, "max_batch", int, DEFAULT_MAX_BATCH, 1, 4096)
    window_s = _number(args, "window_s", float, DEFAULT_WINDOW_S, 0.0, 10.0)
    tokens = args.get("tokens")
    if not (tokens is None or (isinstance(tokens, str) and tokens)):
        raise SplitInferError(f"Ray Serve app argument tokens={tokens!r} is not a path (a tokens file)")
    batching = BatchingConfig(window_ms=window_s * 1e3, max_batch=max_batch)
    return ServerConfig(bundles, threads=threads, batching=batching, trust_keys=trust_keys, tokens=tokens)


def app(args: dict[str, Any]) -> serve.Application:
    """The application `serve run`/`serve deploy` build: `bundles` (a list, or comma-separated),
    and optionally `threads`, `max_batch`, `window_s`, `trust_keys` (public keys, PEM: serve only
    bundles signed by one of them) and `tokens` (a tokens file: require a bearer token)."""
    return TailDeployment.bind(server_config(args))


def _number(args: dict[str, Any], name: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = args.get(name)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    # `not low <= nan` is True: a NaN window is refused too.
    if number is None or not low <= number <= high:
        what = "an integer" if kind is int else "a number"
        raise SplitInferError(f"Ray Serve app argument {name}={value!r} is not {what} between {low:g} and {high:g}")
    return number


def _paths(args: dict[str, Any], name: str) -> list[str]:
    value = args.get(name) or []
    return [p for p in value.split(",") if p] if isinstance(value, str) else [str(p) for p in value]
