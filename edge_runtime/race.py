"""Racing the device's own run against the server (EdgeConfig.race_local): the first answer wins.

The device runs the rest of the model from the cut (edge_runtime.local_tail) while the request
crosses the network, and the loser is cancelled (the RPC, or the onnxruntime run). The local run
starts as soon as the head is done, and the encoding and sending go on beside it: a phone's second
core and its radio do that while the first core computes. On a slow link the device's own answer
comes first, on a fast one the server's, so the latency follows the better of the two request by
request, at the price of running the whole model on the device (energy) and sending bytes that
may not be needed. A request the server could not answer (the fallback codes) is answered by the
local run, without retries; any other refusal is raised. Streams do not race.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from edge_runtime.fallback import FALLBACK_CODES
from edge_runtime.local_tail import Cancel, Cancelled
from edge_runtime.parts import Tail
from edge_runtime.retry import Outcome, RetryPolicy, send
from edge_runtime.transport import Transport
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

# Who answered a raced request.
SERVER, DEVICE = "server", "device"
# Local runs racing the server at once (one per thread calling infer, up to this many).
_RACERS = 4


@dataclass(frozen=True)
class LocalRun:
    """The rest of the model running here from `cut`, racing the request."""

    future: concurrent.futures.Future
    cancel: Cancel
    cut: str

    def stop(self) -> None:
        """Stops the run and waits until it has: the device's core is free for what comes next."""
        self.cancel.cancel()
        try:
            self.future.result()
        except Cancelled:
            pass
        except Exception:
            log.exception("the cancelled local run failed")


class LocalRunner:
    """Starts local runs of `tail` on threads of their own, made on the first race."""

    def __init__(self, tail: Tail) -> None:
        self._tail = tail
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self, tensors: dict[str, np.ndarray], cut: str) -> LocalRun:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(_RACERS, thread_name_prefix="edge-local-tail")
        cancel = Cancel()

        def run() -> tuple[Mapping[str, np.ndarray], float, float]:
            started = time.perf_counter()
            outputs = self._tail.run(tensors, cut, cancel)
            done = time.perf_counter()
            return outputs, (done - started) * 1e3, done

        return LocalRun(self._pool.submit(run), cancel, cut)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class RaceOutcome:
    """Who answered a raced request first: the server (`server`, its reply) or the device
    (`outputs`, computed in `tail_ms` and ready at `done`; `reason` says why the server could not
    answer, when it could not). `sent`: when the request went out (time.perf_counter)."""

    winner: str
    sent: float
    server: Outcome | None = None
    outputs: dict[str, np.ndarray] | None = None
    tail_ms: float = 0.0
    done: float = 0.0
    reason: str = ""


def race(
    transport: Transport, request: pb.InferRequest, local: LocalRun, retry: RetryPolicy, rng: random.Random
) -> RaceOutcome:
    """Sends `request` while `local` goes on; the first answer wins, the other is cancelled. A
    server that cannot answer (the fallback codes) leaves the answer to the local run; any other
    refusal is raised. `retry` applies only where the local run failed and the server must answer."""
    finished = threading.Event()
    received: list[float] = []
    sent = time.perf_counter()
    call = transport.infer_future(request)

    def on_reply(_: object) -> None:
        received.append(time.perf_counter())
        finished.set()

    call.add_done_callback(on_reply)
    local.future.add_done_callback(lambda _: finished.set())
    finished.wait()
    reason = ""
    # Both may be done by now: the earlier finish wins.
    server_first = bool(received) and not (
        local.future.done() and local.future.exception() is None and local.future.result()[2] < received[0]
    )
    if server_first:
        try:
            response = call.result()
        except grpc.RpcError as err:
            error = transport.error(err.code(), err.details())
            error.__cause__ = err
            if err.code() not in FALLBACK_CODES:
                local.stop()
                raise error from err
            reason = str(error)
        else:
            local.stop()
            transport.check_reply_to(request, response)
            return RaceOutcome(SERVER, sent, server=Outcome(1, response, sent=sent, received=received[0]))
    return _after_the_local_run(transport, request, local, call, sent, reason, retry, rng)


def _after_the_local_run(
    transport: Transport,
    request: pb.InferRequest,
    local: LocalRun,
    call: grpc.Future,
    sent: float,
    reason: str,
    retry: RetryPolicy,
    rng: random.Random,
) -> RaceOutcome:
    """The device's answer, or, should the local run fail, the server's after all."""
    try:
        outputs, tail_ms, done = local.future.result()
    except Exception:
        # The local run failed (it should not: the bundle was verified): the server's answer,
        # then, whatever it is.
        log.exception("the local run of cut %s failed; waiting for the server", local.cut)
        outcome = send(transport, request, retry, rng) if reason else _await(transport, call, sent)
        if outcome.error is not None:
            raise outcome.error from None
        return RaceOutcome(SERVER, sent, server=outcome)
    if not reason:
        call.cancel()
    return RaceOutcome(DEVICE, sent, outputs=outputs, tail_ms=tail_ms, done=done, reason=reason)


def _await(transport: Transport, call: grpc.Future, sent: float) -> Outcome:
    try:
        response = call.result()
    except grpc.RpcError as err:
        error = transport.error(err.code(), err.details())
        error.__cause__ = err
        return Outcome(1, error=error)
    return Outcome(1, response, sent=sent, received=time.perf_counter())
