"""The tails on Ray Serve, for a deployment that outgrows one machine: gRPC ingress speaking
splitinfer.v1.SplitInference, requests batched by `serve.batch`, replicas autoscaled on the
requests they hold.

Ray Serve's gRPC proxy receives the calls and hands each to a replica's method of the same name.
A replica holds a `TailService` whose own queues are off (window 0, batches of 1): here Ray
batches, and `TailService.infer_batch` checks, decodes and runs each batch, sharing a tail call
among the requests that can (same bundle, a batchable tail, same shapes). A refused request gets
its own status and message, as from `splitinfer serve`. The edge client needs nothing new: it
dials the proxy's port. (With several Serve applications Ray routes by the call metadata
`application: NAME`, which the edge client does not send: deploy this one alone.)
Unary Infer and ListModels only: InferStream, health, reflection, tokens and TLS are the ingress's
business here (Ray's proxy, or a gateway in front of it), not the replicas'.

    ray start --head; serve deploy deploy/ray/serve.yaml     # or: serve run deploy/ray/serve.yaml
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import load_served_bundles
from cloud_runtime.tails import TailService
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb

# What Serve's gRPC proxy registers (its `grpc_servicer_functions`).
GRPC_SERVICER_FUNCTIONS = ["protos.splitinfer.v1.inference_pb2_grpc.add_SplitInferenceServicer_to_server"]
DEFAULT_MAX_BATCH = 32
DEFAULT_WINDOW_S = 0.002
# Scale out when a replica holds more requests than a batch: they would wait a batch or more.
AUTOSCALING = {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": DEFAULT_MAX_BATCH}


@serve.deployment(autoscaling_config=AUTOSCALING, max_ongoing_requests=4 * DEFAULT_MAX_BATCH)
class TailDeployment:
    """Serves the tails of `config.bundles` (directories every replica can read) with its
    `threads`, `trust_keys` and `batching` (window and batch size; Ray's own queue holds the
    waiting requests, so `max_queue` is not used); where to listen is the ingress's business."""

    def __init__(self, config: ServerConfig) -> None:
        # Signatures are checked here, where the replica reads the bundles, not where the app was built.
        loaded = load_served_bundles(config)
        self.tails = TailService(loaded, threads=config.threads, batching=BatchingConfig(window_ms=0, max_batch=1))
        self._batch.set_max_batch_size(config.batching.max_batch)
        self._batch.set_batch_wait_timeout_s(config.batching.window_ms / 1e3)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WINDOW_S)
    async def _batch(self, requests: list[pb.InferRequest]) -> list[pb.InferResponse | SplitInferError]:
        # The tail is CPU work that releases the GIL: off the replica's event loop, which keeps
        # taking the next batch's requests meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self.tails.infer_batch, requests)

    async def Infer(self, request: pb.InferRequest, grpc_context: RayServegRPCContext) -> pb.InferResponse:
        outcome = await self._batch(request)
        if isinstance(outcome, SplitInferError):
            grpc_context.set_code(outcome.status_code)
            grpc_context.set_details(str(outcome))
            return pb.InferResponse(request_id=request.request_id)
        return outcome

    async def ListModels(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        return self.tails.list_models()


def app(args: dict[str, Any]) -> serve.Application:
    """The application `serve run`/`serve deploy` build: `bundles` (a list, or comma-separated),
    and optionally `threads`, `max_batch`, `window_s`, and `trust_keys` (public keys, PEM: serve
    only bundles signed by one of them)."""
    bundles, trust_keys = _paths(args, "bundles"), _paths(args, "trust_keys")
    if not bundles:
        raise SplitInferError("the Ray Serve app needs `bundles`: the bundle directories to serve")
    threads = _number(args, "threads", int, None, 1, 1024)
    max_batch = _number(args, "max_batch", int, DEFAULT_MAX_BATCH, 1, 4096)
    window_s = _number(args, "window_s", float, DEFAULT_WINDOW_S, 0.0, 10.0)
    batching = BatchingConfig(window_ms=window_s * 1e3, max_batch=max_batch)
    return TailDeployment.bind(ServerConfig(bundles, threads=threads, batching=batching, trust_keys=trust_keys))


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
