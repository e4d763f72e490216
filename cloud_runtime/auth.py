"""Per-client bearer tokens: who may call the server, and who each call came from.

A tokens file has one `client-id token` per line (blank lines and `#` comments allowed); a client
sends `authorization: Bearer <token>` metadata on every call. `TokenAuthInterceptor` checks it
before any method runs and answers a missing, malformed or unknown token UNAUTHENTICATED, naming
what was wrong but never echoing the token. grpc.health.v1 stays open, so load balancers and
Kubernetes probes (which send no credentials) keep working; everything else, reflection
included, needs a token.

The client id of an accepted call is set in `CLIENT_ID` for the servicer's logs and metrics:
gRPC runs the interceptor and the method in the same per-call `contextvars.Context`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import grpc

from cloud_runtime.credential_file import read_pairs
from protos.errors import SplitInferError

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
CLIENT_ID: ContextVar[str] = ContextVar("splitinfer_client_id", default=ANONYMOUS)
# Probes carry no credentials; a health status reveals nothing a client could use.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_BEARER = "bearer "


class TokensFileError(SplitInferError):
    """A tokens file is missing, empty or has a line that is not `client-id token`."""


def load_tokens(path: str | Path) -> dict[str, str]:
    """Token → client id from `path`. A client may hold several tokens (to rotate them); one token
    held by two clients is refused, since a call with it could not say who made it."""
    tokens: dict[str, str] = {}
    for number, client, token in read_pairs(path, "tokens file", "client-id token", TokensFileError):
        if token in tokens and tokens[token] != client:
            raise TokensFileError(
                f"tokens file {str(path)!r} line {number}: client {client!r} has the same token as {tokens[token]!r}"
            )
        tokens[token] = client
    if not tokens:
        raise TokensFileError(f"tokens file {str(path)!r} has no tokens: no client could call the server")
    return tokens


def current_client() -> str:
    """The client id of the call being served ("anonymous" when the server has no tokens)."""
    return CLIENT_ID.get()


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Lets through calls whose bearer token is in `tokens` (token → client id) and health checks.

    `on_refused(reason)` is told of each refusal ("missing", "malformed", "invalid"), for metrics.
    """

    def __init__(self, tokens: Mapping[str, str], on_refused: Callable[[str], None] | None = None) -> None:
        if not tokens:
            raise TokensFileError("no tokens: no client could call the server")
        # Looked up by digest: the comparison then leaks nothing about how much of a guess was right.
        self._clients = {_digest(token): client for token, client in tokens.items()}
        self._on_refused = on_refused

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        client, reason, message = self.authenticate(handler_call_details.invocation_metadata or ())
        if client is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None
            if self._on_refused is not None:
                self._on_refused(reason)
            return _refusal(handler, method, message)
        CLIENT_ID.set(client)
        return continuation(handler_call_details)

    def authenticate(self, metadata: Any) -> tuple[str | None, str, str]:
        """(client id, "", "") for a good token, else (None, reason, message)."""
        values = [value for key, value in metadata if key == "authorization"]
        if not values:
            return None, "missing", "missing credentials: send metadata 'authorization: Bearer <token>'"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        if len(values) > 1 or not value[: len(_BEARER)].lower() == _BEARER or not value[len(_BEARER) :].strip():
            return None, "malformed", "malformed credentials: expected one 'authorization: Bearer <token>'"
        client = self._clients.get(_digest(value[len(_BEARER) :].strip()))
        if client is None:
            return None, "invalid", "invalid token: not one this server accepts"
        return client, "", ""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _refusal(handler: grpc.RpcMethodHandler, method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler that answers UNAUTHENTICATED at once, from the call's metadata, without waiting
    for the request. It is a request-streaming handler whatever the method's kind: gRPC calls a
    unary-request handler only once the message has arrived, so a call that never sends one would
    hold a worker (and, enough of them, every worker) before its token was ever looked at."""

    def refuse(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        log.warning(
            "refused %s from %s: %s", method, context.peer(), message, extra={"method": method, "peer": context.peer()}
        )
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(True, bool(handler.response_streaming))]
    # The bytes of a refused call are received but never parsed (gRPC takes None as a failure).
    return make(refuse, request_deserializer=_unparsed, response_serializer=handler.response_serializer)


def _unparsed(data: bytes) -> bytes:
    return data
