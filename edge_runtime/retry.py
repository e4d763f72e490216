"""Sending a unary request again when the server could not take it.

A request refused with UNAVAILABLE (the server is not there, restarting, or the connection dropped;
not a server certificate this client refused), with RESOURCE_EXHAUSTED carrying the server's
`retry-after-ms` hint (protos.transport: its queue is full) or with gRPC's own concurrent-call
limit is sent again, the same request with the same request_id, after an exponential backoff
with jitter, within `RetryPolicy`'s attempts and time; the caller gets one answer per request,
never a duplicate. Any other refusal ends the attempts at once: sending it again changes nothing.
The request's deadline covers all of it: no attempt starts that could not end before it.
`send` makes the calls and returns their `Outcome`: the reply, or the error of the last attempt.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.transport import RETRY_AFTER_KEY

if TYPE_CHECKING:
    # Only a type here: the transport is configured by EdgeConfig, which holds a RetryPolicy.
    from edge_runtime.transport import Transport


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a request the server could not take is sent again.

    `attempts` counts the first; the n-th retry waits between half and all of
    min(max_backoff_s, initial_backoff_s × multiplier^(n-1)) (the jitter keeps clients that failed
    together from retrying together), or the server's retry-after hint when that is longer. No
    retry starts once `max_elapsed_s` have passed since the first attempt."""

    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    max_elapsed_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100:
            raise SplitInferError(f"retry attempts {self.attempts!r} is not between 1 and 100")
        for name in ("initial_backoff_s", "max_backoff_s", "max_elapsed_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SplitInferError(f"retry {name} {value!r} is not a finite number ≥ 0")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise SplitInferError(f"retry multiplier {self.multiplier!r} is not a finite number ≥ 1")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (1, 2, ...)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Outcome:
    """What the calls for one request came to: a reply (with when it was sent and received) or an error."""

    attempts: int
    response: pb.InferResponse | None = None
    error: SplitInferError | None = None
    sent: float = 0.0
    received: float = 0.0
    # When the first attempt went out (time.monotonic).
    first: float = 0.0


def send(transport: Transport, request: pb.InferRequest, retry: RetryPolicy, rng: random.Random) -> Outcome:
    """Infer, sent again as `retry` allows; the reply, or the error of the last attempt. The
    request's deadline (the transport's timeout) covers every attempt and the waits between them."""
    first = time.monotonic()
    deadline = first + transport.timeout_s
    attempt = 0
    while True:
        attempt += 1
        sent = time.perf_counter()
        try:
            response = transport.infer(request, timeout_s=max(deadline - time.monotonic(), 0.0))
        except grpc.RpcError as err:
            wait_s = retry_wait(err, retry, attempt, first, rng, deadline=deadline)
            if wait_s is None:
                error = transport.error(err.code(), err.details(), attempt)
                error.__cause__ = err
                return Outcome(attempt, error=error, first=first)
            time.sleep(wait_s)
            continue
        # A retry resends the same request, so a reply can only ever be to this one.
        transport.check_reply_to(request, response)
        return Outcome(attempt, response, sent=sent, received=time.perf_counter(), first=first)


def retry_wait(
    err: grpc.RpcError,
    retry: RetryPolicy,
    attempt: int,
    first: float,
    rng: random.Random,
    *,
    deadline: float = math.inf,
) -> float | None:
    """Seconds to wait before sending the request again, or None when it must not be: the
    refusal is not one a retry mends, the attempts or the time are spent, or the next attempt
    could not start before the request's `deadline` (time.monotonic)."""
    if not retryable(err):
        return None
    if attempt >= retry.attempts:
        return None
    wait_s = retry.backoff_s(attempt, rng)
    hint_ms = retry_after_ms(err)
    if hint_ms is not None:
        wait_s = max(wait_s, hint_ms / 1e3)
    now = time.monotonic()
    if now + wait_s - first > retry.max_elapsed_s or now + wait_s >= deadline:
        return None
    return wait_s


# What gRPC's words say when TLS cannot work as configured: this client refused the server's
# certificate, or the server does not speak TLS at all. No retry mends either.
TLS_MISMATCHES = {
    "CERTIFICATE_VERIFY_FAILED": "certificate",
    "WRONG_VERSION_NUMBER": "plaintext",
}


def tls_mismatch(details: str | None) -> str:
    """Which TLS mismatch gRPC's words report ("certificate", "plaintext"), or ""."""
    return next((kind for words, kind in TLS_MISMATCHES.items() if details and words in details), "")


# What gRPC's server says when its concurrent-call limit (maximum_concurrent_rpcs) is reached.
_CALL_LIMIT = "Concurrent RPC limit exceeded"


def retryable(err: grpc.RpcError) -> bool:
    """Whether sending the same request again may be answered: the server was not there, its
    queue was full (its retry-after hint) or its call limit was reached. A refused certificate, a
    message too large or a refused request stays refused."""
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return not tls_mismatch(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return retry_after_ms(err) is not None or _CALL_LIMIT in details
    return False


def retry_after_ms(err: grpc.RpcError) -> int | None:
    """The server's hint of when to retry (a full queue), in ms; None without one."""
    hint = dict(err.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
    return int(hint) if hint is not None and str(hint).isdigit() else None
