"""The error hierarchy both runtimes share.

Each error carries the gRPC status code it maps to, so the servicer turns any of them into a status
whose message is the error's own text, and the CLI turns any of them into exit code 2 and one line.
"""

from __future__ import annotations

import grpc


class SplitInferError(Exception):
    """Base of every error splitinfer raises on purpose (bad input, bad file, bad request)."""

    status_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


class CodecError(SplitInferError):
    """A tensor cannot be encoded or decoded: bad dtype, shape, payload size or compressed frame."""


class TensorSpecError(SplitInferError):
    """A tensor does not match what the receiving side expects (name, dtype, shape)."""


class UnknownModelError(SplitInferError):
    status_code = grpc.StatusCode.NOT_FOUND


class BundleMismatchError(SplitInferError):
    """The request's head does not belong to the tail the server holds (different content hash)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class BundleError(SplitInferError):
    """A bundle directory is missing, incomplete, or its files do not match the manifest."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ServerUnavailableError(SplitInferError):
    status_code = grpc.StatusCode.UNAVAILABLE
