"""The gRPC face of `TailService`: splitinfer.v1.SplitInference, kept thin.

Each method hands the request to the core and turns what goes wrong into a status: a
`SplitInferError` becomes its own `status_code` with its message intact; anything else is a bug,
logged with its traceback and answered INTERNAL, and the server goes on serving. On InferStream a
failure is answered in-band (the reply's `error`, with the request_id) so one bad message does not
end the stream for the messages behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from cloud_runtime.tails import TailService
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, tails: TailService) -> None:
        self.tails = tails

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        try:
            return self.tails.infer(request)
        except Exception as err:
            code, message = _status(err, request)
        # Outside the except block, so the abort's own exception is not chained to the error.
        context.abort(code, message)

    def InferStream(
        self, request_iterator: Iterator[pb.InferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.InferResponse]:
        for request in request_iterator:
            try:
                yield self.tails.infer(request)
            except Exception as err:
                code, message = _status(err, request)
                yield pb.InferResponse(
                    request_id=request.request_id, error=pb.Error(code=code.value[0], message=message)
                )

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return self.tails.list_models()


def _status(err: Exception, request: pb.InferRequest) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, SplitInferError):
        log.info("request %s refused (%s): %s", request.request_id, err.status_code.name, err)
        return err.status_code, str(err)
    log.exception("request %s failed", request.request_id)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
