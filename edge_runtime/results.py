"""What one request came to: its result (`EdgeResult`), the milliseconds of each step (`RequestTiming`),
and the one place a result is made from the request as prepared and the answer it got.

Whoever answered — the server, the tail run here because the server could not be used, the
device's own run winning a race, or the head alone for a bundle that has no tail — the result is
built by `build_result`, so that each field means the same in every case: bytes are counted when
the request went out (the server answered, or it raced), and the timing attributes each
millisecond to the head, the encoding, the network, the server or the tail run here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.adaptive import Decision
from edge_runtime.race import LocalRun
from protos.bundle import Bundle
from protos.codec import Codec
from protos.splitinfer.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class RequestTiming:
    """Milliseconds of one request, in stages that add up to `total_ms`:

        head + encode + network + decode + queue + tail + output_encode + output_decode + other

    decode, queue, tail and output_encode are the server's own account (ServerTiming; together
    `server_ms`); network is the rest of the RPC's wall time (serialisation, transfer, round
    trips); output_decode is decoding the reply here; other is what is left: building the
    request, and a retried request's earlier attempts and waits."""

    head_ms: float
    encode_ms: float
    network_ms: float
    decode_ms: float
    tail_ms: float
    server_ms: float
    output_decode_ms: float
    total_ms: float
    # The calling thread's CPU time in the head and the encoding: what the request cost the device's
    # core, without the time other processes take on a shared machine (a multi-threaded head's
    # worker threads are not counted).
    device_cpu_ms: float = 0.0
    queue_ms: float = 0.0
    output_encode_ms: float = 0.0
    other_ms: float = 0.0

    @property
    def stages(self) -> dict[str, float]:
        """The stages, in order, that add up to total_ms."""
        return {
            "head": self.head_ms,
            "encode": self.encode_ms,
            "network": self.network_ms,
            "decode": self.decode_ms,
            "queue": self.queue_ms,
            "tail": self.tail_ms,
            "output encode": self.output_encode_ms,
            "output decode": self.output_decode_ms,
            "other": self.other_ms,
        }


@dataclass(frozen=True)
class EdgeResult:
    outputs: dict[str, np.ndarray]
    timing: RequestTiming
    # Payload bytes of the cut tensors (after the codec), and the whole messages as serialised.
    bytes_sent: int
    request_bytes: int
    response_bytes: int
    request_id: str
    # Calls made to the server for this result (retries included; 0 when it never asked one).
    attempts: int = 1
    # True when the tail ran here because the server could not be used; the reason says why.
    fallback: bool = False
    fallback_reason: str = ""
    # The cut and codec this request ran with ("-": nothing sent), and with a multi-cut bundle the
    # decision that chose them (the link estimate, the predicted latency, whether it switched).
    cut: str = ""
    codec: str = ""
    decision: Decision | None = None
    # With race_local: whether the request raced the device's own run, and who answered first
    # ("server" or "device").
    raced: bool = False
    winner: str = ""


@dataclass(frozen=True)
class Prepared:
    """A request up to its sending: the head's tensors, the message and what making them took."""

    cut: dict[str, np.ndarray]
    request: pb.InferRequest
    start: float
    head_ms: float
    encode_ms: float
    device_cpu_ms: float
    # The bundle of the cut this request runs (one of a multi-cut bundle's), and its codec.
    variant: Bundle
    codec: Codec
    decision: Decision | None = None
    local: LocalRun | None = None

    @property
    def split(self) -> bool:
        return self.variant.manifest.has_tail


@dataclass(frozen=True)
class Answer:
    """Who computed a request's outputs: the server (`response`, with when the request was sent and
    the reply received) or this device (`tail_ms` of the tail run here; none for a head alone)."""

    outputs: dict[str, np.ndarray]
    # When the outputs were ready here (time.perf_counter): decoded, or computed.
    done: float
    tail_ms: float = 0.0
    response: pb.InferResponse | None = None
    sent: float = 0.0
    received: float = 0.0


def build_result(
    prepared: Prepared, answer: Answer, *, attempts: int = 1, reason: str = "", winner: str = ""
) -> EdgeResult:
    """The result of `prepared` answered by `answer`, after `attempts` calls to the server; `reason`
    says why the tail ran here instead of there (a fallback), `winner` who won a race."""
    reply = answer.response
    # The request went out when the server answered it or when it raced: its bytes and codec are
    # the record's, whoever answered.
    went_out = reply is not None or bool(winner)
    if reply is None:
        network_ms = decode_ms = server_ms = output_decode_ms = queue_ms = output_encode_ms = 0.0
        tail_ms = answer.tail_ms
    else:
        server = reply.timing
        rpc_ms = (answer.received - answer.sent) * 1e3
        # Serialisation on both sides, transfer and round trips: all the call took beyond the
        # server's own work. Two clocks measure it, so clamp the rounding below zero.
        network_ms = max(0.0, rpc_ms - server.total_ms)
        decode_ms, tail_ms, server_ms = server.decode_ms, server.tail_ms, server.total_ms
        queue_ms, output_encode_ms = _server_queue_ms(server), server.encode_ms
        output_decode_ms = (answer.done - answer.received) * 1e3
    total_ms = (answer.done - prepared.start) * 1e3
    encode_ms = prepared.encode_ms if prepared.split else 0.0
    counted = (
        prepared.head_ms + encode_ms + network_ms + decode_ms + queue_ms + tail_ms + output_encode_ms + output_decode_ms
    )
    timing = RequestTiming(
        head_ms=prepared.head_ms,
        # A cut without a tail encodes nothing.
        encode_ms=encode_ms,
        network_ms=network_ms,
        decode_ms=decode_ms,
        tail_ms=tail_ms,
        server_ms=server_ms,
        output_decode_ms=output_decode_ms,
        total_ms=total_ms,
        device_cpu_ms=prepared.device_cpu_ms,
        queue_ms=queue_ms,
        output_encode_ms=output_encode_ms,
        other_ms=max(0.0, total_ms - counted),
    )
    request = prepared.request
    return EdgeResult(
        outputs=answer.outputs,
        timing=timing,
        bytes_sent=sum(len(t.data) for t in request.tensors) if went_out else 0,
        request_bytes=request.ByteSize() if went_out else 0,
        response_bytes=reply.ByteSize() if reply is not None else 0,
        request_id=request.request_id,
        attempts=attempts,
        fallback=bool(reason),
        fallback_reason=reason,
        cut=prepared.variant.manifest.cut_name,
        codec=prepared.codec.name if went_out else "-",
        decision=prepared.decision,
        raced=bool(winner),
        winner=winner,
    )


def _server_queue_ms(server: pb.ServerTiming) -> float:
    """The server's queue wait; from a server that does not report it (older, or another
    implementation), what its total leaves beside its stages. A negative or non-finite figure is
    no measurement and counts as none."""
    queue_ms = server.queue_ms or server.total_ms - server.decode_ms - server.tail_ms - server.encode_ms
    return queue_ms if math.isfinite(queue_ms) and queue_ms > 0 else 0.0
