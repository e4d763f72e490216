"""The gRPC face of `TailService`: splitinfer.v1.SplitInference, kept thin.

Each method hands the request to the core, with the client's deadline, and turns what goes wrong
into a status: a `SplitInferError` becomes its own `status_code` with its message intact;
anything else is a bug, logged with its traceback and answered INTERNAL, and the server goes on
serving. A request refused because its model's queue is full (RESOURCE_EXHAUSTED) says when to
retry in its message and, on Infer, in the trailing metadata `retry-after-ms` (milliseconds, for
clients that back off by it). On InferStream a failure is answered in-band (the reply's `error`, with the request_id)
so one bad message does not end the stream for the messages behind it. Every request, a stream's
messages included, ends with one access-log line and is counted in the metrics. FetchBundleFile
streams a served bundle's file to a device (cloud_runtime.bundle_files); its refusal is the
call's status, and it is logged but not counted as a request.

`add_to_server` registers the service with parsers that never fail: bytes that are not a valid
message (garbage, a truncated request) reach the servicer as `MalformedRequest` and are answered
INVALID_ARGUMENT, where gRPC's own parsing would answer INTERNAL ("Exception deserializing
request!") and log a traceback for every one. A status message is cut to `MAX_STATUS_BYTES` as
sent: it may quote what the client sent, and a client refuses status trailers beyond its metadata
limit (8 KiB by default), so an unbounded echo would replace the answer with a transport error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message

from cloud_runtime.auth import current_client
from cloud_runtime.batch_queue import QueueFullError
from cloud_runtime.bundle_files import file_chunks
from cloud_runtime.metrics import ServerMetrics
from cloud_runtime.tails import TailService
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.transport import RETRY_AFTER_KEY

log = logging.getLogger(__name__)
# A logger of its own, so an operator can turn the per-request lines down without losing the rest.
access_log = logging.getLogger("cloud_runtime.access")

_OK = grpc.StatusCode.OK
# Ids come from the client: a log line must not grow with whatever it sends.
_MAX_ID_CHARS = 80
# Of the status message as gRPC sends it (percent-encoded), well inside a client's 8 KiB of trailers.
MAX_STATUS_BYTES = 4096


@dataclass(frozen=True)
class MalformedRequest:
    """Bytes that do not parse as the method's request message; `error` says why."""

    error: str


class MalformedRequestError(SplitInferError):
    """The request's bytes are not a valid message of its type."""


def add_to_server(servicer: SplitInferenceServicer, server: grpc.Server) -> None:
    """Registers splitinfer.v1.SplitInference as the generated code does, with parsers that hand a
    malformed request to the servicer instead of failing."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer,
            request_deserializer=lenient_parser(pb.InferRequest),
            response_serializer=pb.InferResponse.SerializeToString,
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=lenient_parser(pb.InferRequest),
            response_serializer=pb.InferResponse.SerializeToString,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=lenient_parser(pb.ListModelsRequest),
            response_serializer=pb.ListModelsResponse.SerializeToString,
        ),
        "FetchBundleFile": grpc.unary_stream_rpc_method_handler(
            servicer.FetchBundleFile,
            request_deserializer=lenient_parser(pb.FetchBundleFileRequest),
            response_serializer=pb.FileChunk.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def lenient_parser(message_type: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    """A parser of `message_type` that never raises: bytes that are not one become MalformedRequest
    (shared by the web port, whose calls meet the same servicer)."""

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return MalformedRequest(
                f"{len(data)} bytes that are not a valid {message_type.DESCRIPTOR.full_name}: {err}"
            )

    return parse


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, tails: TailService, metrics: ServerMetrics | None = None) -> None:
        self.tails = tails
        self.metrics = metrics

    def Infer(self, request: pb.InferRequest | MalformedRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        response, code, message = self.handle(request, context, "Infer")
        if response is None:
            context.abort(code, message)
        return response

    def InferStream(
        self, request_iterator: Iterator[pb.InferRequest | MalformedRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.InferResponse]:
        for request in request_iterator:
            response, code, message = self.handle(request, context, "InferStream")
            if response is None:
                request_id = request.request_id if isinstance(request, pb.InferRequest) else ""
                response = pb.InferResponse(request_id=request_id, error=pb.Error(code=code.value[0], message=message))
            yield response

    def ListModels(
        self, request: pb.ListModelsRequest | MalformedRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        if isinstance(request, MalformedRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(request.error))
        return self.tails.list_models()

    def FetchBundleFile(
        self, request: pb.FetchBundleFileRequest | MalformedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FileChunk]:
        """One file of a served bundle, in chunks (cloud_runtime.bundle_files); a refusal is the
        call's status, before any chunk."""
        start = time.perf_counter()
        try:
            chunks = requested_chunks(self.tails, request)
        except SplitInferError as err:
            code, message = err.status_code, bounded(str(err))
        else:
            sent = 0
            for chunk in chunks:
                sent += len(chunk.data)
                yield chunk
            code, message = _OK, ""
        ms = (time.perf_counter() - start) * 1e3
        fetched = request if isinstance(request, pb.FetchBundleFileRequest) else pb.FetchBundleFileRequest()
        access_log.info(
            "FetchBundleFile %r model=%r bundle=%s client=%s %s %.2f ms%s",
            fetched.file[:_MAX_ID_CHARS],
            fetched.model_id[:_MAX_ID_CHARS],
            fetched.bundle_hash[:12],
            current_client(),
            code.name,
            ms,
            f": {message}" if message else f" ({sent} bytes)",
        )
        if code != _OK:
            context.abort(code, message)

    def handle(
        self, received: pb.InferRequest | MalformedRequest, context: grpc.ServicerContext, method: str
    ) -> tuple[pb.InferResponse | None, grpc.StatusCode, str]:
        """(response, OK, "") or (None, code, message) for one request, logged and counted."""
        start = time.perf_counter()
        request = received if isinstance(received, pb.InferRequest) else pb.InferRequest()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            if isinstance(received, MalformedRequest):
                raise MalformedRequestError(received.error)
            response: pb.InferResponse | None = self.tails.infer(request, deadline=_deadline(context))
            code, message = _OK, ""
        except Exception as err:
            response = None
            code, message = _status(err, request)
            message = bounded(message)
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
            extra={
                "request_id": request_id,
                "model_id": model_id,
                "client": client,
                "code": code.name,
                "ms": round(ms, 3),
            },
        )
        return response, code, message


def requested_chunks(
    tails: TailService, request: pb.FetchBundleFileRequest | MalformedRequest
) -> Iterator[pb.FileChunk]:
    """The chunks a FetchBundleFile request asks for (cloud_runtime.bundle_files), or the
    SplitInferError that refuses it before any chunk: the native server's and Ray's."""
    if isinstance(request, MalformedRequest):
        raise MalformedRequestError(request.error)
    bundle = tails.served_bundle(request.model_id, request.bundle_hash)
    return file_chunks(bundle, request.file, request.offset)


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a `time.monotonic()` instant; None when the client set none."""
    remaining_s = context.time_remaining()
    if remaining_s is None or not math.isfinite(remaining_s) or remaining_s > 1e9:
        return None
    return time.monotonic() + remaining_s


def bounded(message: str) -> str:
    """`message`, cut where its percent-encoded form (3 bytes for each byte outside printable
    ASCII, and for '%') would pass MAX_STATUS_BYTES."""
    budget = MAX_STATUS_BYTES - 64  # room for the note on the cut
    for index, char in enumerate(message):
        budget -= sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in char.encode())
        if budget < 0:
            return f"{message[:index]}... ({len(message)} characters in all)"
    return message


def _status(err: Exception, request: pb.InferRequest) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, SplitInferError):
        return err.status_code, str(err)
    log.exception("request %r failed", request.request_id[:_MAX_ID_CHARS])
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
