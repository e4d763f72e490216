"""The gRPC face of `TailService`: splitinfer.v1.SplitInference, kept thin.

Each method hands the request to the core, with the client's deadline, and turns what goes wrong
into a status: a `SplitInferError` becomes its own `status_code` with its message intact;
anything else is a bug, logged with its traceback and answered INTERNAL, and the server goes on
serving. A request refused because its model's queue is full (RESOURCE_EXHAUSTED) says when to
retry in its message and, on Infer, in the trailing metadata `retry-after-ms` (milliseconds, for
clients that back off by it). On InferStream a failure is answered in-band (the reply's `error`, with the request_id)
so one bad message does not end the stream for the messages behind it. Every request, a stream's
messages included, ends with one access-log line and is counted in the metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import grpc

from cloud_runtime.auth import current_client
from cloud_runtime.batching import QueueFullError
from cloud_runtime.metrics import ServerMetrics
from cloud_runtime.tails import TailService
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
# A logger of its own, so an operator can turn the per-request lines down without losing the rest.
access_log = logging.getLogger("cloud_runtime.access")

_OK = grpc.StatusCode.OK
# Trailing metadata of a refusal for a full queue: when to retry, in ms (EdgeClient reads it).
RETRY_AFTER_KEY = "retry-after-ms"
# Ids come from the client: a log line must not grow with whatever it sends.
_MAX_ID_CHARS = 80


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, tails: TailService, metrics: ServerMetrics | None = None) -> None:
        self.tails = tails
        self.metrics = metrics

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        response, code, message = self._handle(request, context, "Infer")
        if response is None:
            context.abort(code, message)
        return response

    def InferStream(
        self, request_iterator: Iterator[pb.InferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.InferResponse]:
        for request in request_iterator:
            response, code, message = self._handle(request, context, "InferStream")
            if response is None:
                response = pb.InferResponse(
                    request_id=request.request_id, error=pb.Error(code=code.value[0], message=message)
                )
            yield response

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return self.tails.list_models()

    def _handle(
        self, request: pb.InferRequest, context: grpc.ServicerContext, method: str
    ) -> tuple[pb.InferResponse | None, grpc.StatusCode, str]:
        """(response, OK, "") or (None, code, message) for one request, logged and counted."""
        start = time.perf_counter()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            response: pb.InferResponse | None = self.tails.infer(request, deadline=_deadline(context))
            code, message = _OK, ""
        except Exception as err:
            response = None
            code, message = _status(err, request)
            if isinstance(err, QueueFullError) and method == "Infer":
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(err.retry_after_ms)),))
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()
        ms = (time.perf_counter() - start) * 1e3
        client = current_client()
        if self.metrics is not None:
            self.metrics.observe(request, response, code.name, client)
        request_id, model_id = request.request_id[:_MAX_ID_CHARS], request.model_id[:_MAX_ID_CHARS]
        access_log.info(
            "%s %r model=%r client=%s %s %.2f ms%s",
            method,
            request_id,
            model_id,
            client,
            code.name,
            ms,
            f": {message}" if message else "",
            extra={"request_id": request_id, "model_id": model_id, "client": client, "code": code.name, "ms": round(ms, 3)},
        )
        return response, code, message


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a `time.monotonic()` instant; None when the client set none."""
    remaining_s = context.time_remaining()
    if remaining_s is None or not math.isfinite(remaining_s) or remaining_s > 1e9:
        return None
    return time.monotonic() + remaining_s


def _status(err: Exception, request: pb.InferRequest) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, SplitInferError):
        return err.status_code, str(err)
    log.exception("request %r failed", request.request_id[:_MAX_ID_CHARS])
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
