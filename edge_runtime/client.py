"""The device's side of split inference: run the head, send the cut tensors, receive the outputs.

`EdgeClient` holds a bundle's head and a channel to a server that serves the matching tail. One
`infer` call runs the head, encodes each cut tensor with the codec, calls Infer and decodes the
outputs, timing every step so the result attributes each millisecond (`RequestTiming`). A refusal
by the server becomes the `SplitInferError` subclass matching its status code, with the server's
message intact. A bundle without a tail runs entirely here and needs no server.

Security is the server's choice and the client follows it: `tls_ca` (the CA that signed the
server's certificate) turns on TLS, `tls_cert`/`tls_key` add a client certificate for mutual TLS,
and `token` is sent as `authorization: Bearer <token>` metadata on every call, unary and stream.

Faults: a unary request the server could not take (UNAVAILABLE: not there, restarting, the
connection dropped; RESOURCE_EXHAUSTED with the server's `retry-after-ms` hint: its queue is full)
is sent again, the same request with the same request_id, after an exponential backoff with
jitter, within `RetryPolicy`'s attempts and time; the caller gets one result per `infer`, never a
duplicate. The channel pings a silent connection (keepalive) and redials a lost server within
seconds. With `fallback=True`, when the server stays unreachable (retries spent, or the deadline
passed) the tail runs here, from the bundle's tail.onnx, and the result says so
(`EdgeResult.fallback`, `fallback_reason`); later requests run here too, and one every
`probe_interval_s` tries the server first, so the client returns to split mode once it is back.
Streams (`infer_stream`) are not retried: their first failure ends them, as before.

Adaptive: given a multi-cut bundle (protos.bundle), the client chooses the cut and codec before
each request (edge_runtime.adaptive) from its own estimate of the uplink (edge_runtime.estimator):
every unary request's transfer measures the bandwidth, and a tiny ListModels call when the client
has been idle for `AdaptiveSettings.idle_probe_s` measures the RTT. Each cut is an ordinary bundle
on the server under its own bundle_hash, which the request names: a switch costs no extra round
trip. The result names the cut and codec it used.

Racing (`race_local=True`): the device runs the rest of the model from the cut (edge_runtime.
local_tail) while the request crosses the network, and the first answer wins; the loser is
cancelled (the RPC, or the onnxruntime run). The local run starts as soon as the head is done, and
the encoding and sending go on beside it: a phone's second core and its radio do that while the
first core computes. On a slow link the device's own answer comes first, on a fast one the
server's, so the latency follows the better of the two request by request, at the price of
running the whole model on the device (energy) and sending bytes that may not be needed. With a
multi-cut bundle every request is sent split (the table's best offloading cut), so the link is
always being measured; a raced request the device answered puts a ceiling on the estimate. A
request the server could not answer (the `fallback` codes) is answered by the local run, without
retries. Streams do not race.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np

from edge_runtime.adaptive import AdaptiveController, AdaptiveSettings, Decision
from protos.decisions import DecisionTable
from edge_runtime.head import HeadRunner, SegmentedHead
from edge_runtime.local_tail import Cancel, Cancelled, LocalTail
from protos.bundle import Bundle, MultiCutBundle, is_multi_cut, load_bundle, load_multi_cut_bundle
from protos.codec import Codec, decode, encode
from protos.errors import (
    BundleMismatchError,
    ServerUnavailableError,
    SplitInferError,
    TensorSpecError,
    UnknownModelError,
)
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.tls import TLSFiles
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES, RETRY_AFTER_KEY

log = logging.getLogger(__name__)

Inputs = np.ndarray | Mapping[str, np.ndarray]

# Failures after which running the tail here is the better answer: the server is gone, too slow,
# or overloaded. A refusal of the request itself (a wrong bundle, a bad tensor) is never hidden.
_FALLBACK_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
_CHANNEL_OPTIONS = [
    # Ping a connection that has been silent this long during a call, and give it up when the
    # ping is not answered: a server that vanished without a FIN (power, network) is noticed.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC redials a lost server with a backoff growing to 2 minutes by default; a restarted
    # server should be found within seconds.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


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

# Status codes whose meaning a caller acts on get their own class; any other is a SplitInferError
# carrying the code. INVALID_ARGUMENT stays generic: the server's message says which check failed.
_ERRORS_BY_CODE: dict[grpc.StatusCode, type[SplitInferError]] = {
    grpc.StatusCode.NOT_FOUND: UnknownModelError,
    grpc.StatusCode.FAILED_PRECONDITION: BundleMismatchError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServerUnavailableError,
}
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# How long an adaptive client's first request waits for the connection and the first RTT probe.
_FIRST_PROBE_WAIT_S = 2.0
# Local runs racing the server at once (one per thread calling infer, up to this many).
_RACERS = 4
# Who answered a raced request.
SERVER, DEVICE = "server", "device"


@dataclass(frozen=True)
class RequestTiming:
    """Milliseconds of one request. decode_ms, tail_ms and server_ms are the server's own account
    (ServerTiming); network_ms is the rest of the RPC's wall time."""

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


class TensorEncoder:
    """Encodes the tensors a cut sends (a seam: the experiment's emulated device paces it)."""

    def encode(self, tensors: Mapping[str, np.ndarray], codec: Codec, cut: str) -> list[pb.Tensor]:
        return [encode(name, array, codec) for name, array in tensors.items()]


@dataclass(frozen=True)
class _LocalRun:
    """The rest of the model running here, racing the request."""

    future: concurrent.futures.Future
    cancel: Cancel


@dataclass(frozen=True)
class _Outcome:
    """What the calls for one request came to: a reply (with when it was sent and received) or an error."""

    attempts: int
    response: pb.InferResponse | None = None
    error: SplitInferError | None = None
    sent: float = 0.0
    received: float = 0.0
    # When the first attempt went out (time.monotonic).
    first: float = 0.0


@dataclass(frozen=True)
class _Prepared:
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
    local: _LocalRun | None = None

    @property
    def split(self) -> bool:
        return self.variant.manifest.has_tail


class EdgeClient:
    """Runs `bundle`'s head here and its tail on `server` ("host:port"; None for an edge-only bundle).

    `codec` defaults to the one the bundle was exported and verified with. `threads` are the head's
    onnxruntime threads; `timeout_s` is the deadline of each unary call (the server drops a request
    whose deadline passes before its tail runs).

    `token`: a bearer token the server knows this client by. `tls_ca`: PEM file of the CA that
    signed the server's certificate (TLS on); `tls_cert` and `tls_key`: this client's certificate
    and key, for a server that requires them (mutual TLS). `tls=True` turns TLS on with gRPC's
    default roots when the server's certificate comes from a public CA.

    `retry`: how unary requests are retried (NO_RETRY: never). `fallback`: run the tail here when
    the server cannot be used (it loads tail.onnx, the size of the server's half, on first use);
    `probe_interval_s`: how often, while falling back, a request tries the server first.

    `race_local`: run the rest of the model here while each unary request is out and take the
    first answer (see the module's notes; streams do not race).

    With a multi-cut bundle: `adaptive` sets the hysteresis, probing and estimator window;
    `initial_bandwidth_bps` and `initial_rtt_ms` are what the client plans for until it has
    measured the link (default: 5.85 Mbit/s and the bundle's planning RTT). The table chooses the
    codec of each request, so `codec` must not be given.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle | MultiCutBundle,
        server: str | None,
        *,
        codec: str | Codec | None = None,
        threads: int = 1,
        timeout_s: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        retry: RetryPolicy = RetryPolicy(),
        fallback: bool = False,
        probe_interval_s: float = 5.0,
        adaptive: AdaptiveSettings = AdaptiveSettings(),
        initial_bandwidth_bps: float = 5.85e6,
        initial_rtt_ms: float | None = None,
        race_local: bool = False,
    ) -> None:
        if not (math.isfinite(probe_interval_s) and probe_interval_s >= 0):
            raise SplitInferError(f"probe_interval_s {probe_interval_s!r} is not a finite number ≥ 0")
        if not isinstance(bundle, (Bundle, MultiCutBundle)):
            bundle = load_multi_cut_bundle(bundle) if is_multi_cut(bundle) else load_bundle(bundle)
        self.bundle = bundle
        self.adaptive: AdaptiveController | None = None
        if isinstance(bundle, MultiCutBundle):
            if codec is not None:
                raise SplitInferError(f"codec {codec!r}: a multi-cut bundle's decision table chooses the codec of each request")
            self._variants = {v.manifest.cut_name: v for v in bundle.variants}
            table = DecisionTable.from_dict(bundle.manifest.decisions, cuts=list(self._variants))
            self.adaptive = AdaptiveController(
                table, adaptive, initial_bandwidth_bps=initial_bandwidth_bps,
                initial_rtt_ms=table.planning_rtt_ms if initial_rtt_ms is None else initial_rtt_ms,
            )  # fmt: skip
            # What every cut shares: the model's inputs, outputs and preprocessing.
            manifest = bundle.manifest.cuts[0]
            has_tail = any(v.manifest.has_tail for v in bundle.variants)
        else:
            self._variants = {bundle.manifest.cut_name: bundle}
            manifest = bundle.manifest
            has_tail = manifest.has_tail
        self._model = manifest
        if has_tail and server is None:
            raise SplitInferError(
                f"bundle {str(self.bundle.path)!r} has a tail (cut {manifest.cut_name!r}): a server address is needed"
            )
        self.codec = codec if isinstance(codec, Codec) else Codec.parse(codec or manifest.codec)
        self._codecs: dict[str, Codec] = {}
        self.server = server
        self.timeout_s = timeout_s
        self._metadata = _auth_metadata(token)
        tls_files = TLSFiles(tls_cert, tls_key, tls_ca)
        self.tls = "off" if not (tls or tls_ca or tls_cert or tls_key) else "mutual" if tls_cert else "tls"
        # Read now, so a bad file is reported here, with its name, not at the first call.
        credentials = None
        if self.tls != "off":
            material = tls_files.load(role="client")
            credentials = grpc.ssl_channel_credentials(material.ca, material.key, material.cert)
        self.head = SegmentedHead(bundle, threads=threads) if isinstance(bundle, MultiCutBundle) else HeadRunner(bundle, threads=threads)
        self.threads = threads
        self.retry = retry
        self.fallback = fallback and has_tail
        self.race_local = race_local and has_tail
        self.probe_interval_s = probe_interval_s
        self._rng = random.Random()
        # The rest of the model, for fallback and racing; and how the cut tensors are encoded.
        # Both are attributes, as `head` is, so that an emulated device can pace them.
        self.local_tail = LocalTail(bundle, self.head, threads=threads)
        self.encoder = TensorEncoder()
        self._racers: concurrent.futures.ThreadPoolExecutor | None = None
        # Fallback state, shared by the threads that call infer: why the server is being avoided
        # ("" while in split mode) and when the next request may try it.
        self._lock = threading.Lock()
        self._avoiding = ""
        self._next_probe = 0.0
        # When a request last got the server's answer (time.monotonic).
        self._answered_at = -math.inf
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.SplitInferenceStub | None = None
        self._closed = threading.Event()
        # Set once the first RTT probe is done (or given up): the first request waits for it, as
        # a probe that shares the uplink with a request's bytes would time the transfer, too.
        self._first_probe = threading.Event()
        if has_tail:
            # The same limit both ways as the server's: outputs can exceed gRPC's 4 MB default too.
            options = [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                *_CHANNEL_OPTIONS,
            ]
            if credentials is None:
                self._channel = grpc.insecure_channel(server, options=options)
            else:
                self._channel = grpc.secure_channel(server, credentials, options=options)
            self._stub = pb_grpc.SplitInferenceStub(self._channel)
            if self.adaptive is not None and adaptive.idle_probe_s > 0:
                threading.Thread(target=self._probe_when_idle, name="edge-rtt-probe", daemon=True).start()

    @property
    def in_fallback(self) -> bool:
        """True while the server is being avoided (requests run here, probing it now and then)."""
        return bool(self._avoiding)

    def infer(self, inputs: Inputs) -> EdgeResult:
        """One request; a bare array is the model's single input."""
        prepared = self._prepare(inputs, racing=self.race_local)
        if self._stub is None or not prepared.split:
            return self._local(prepared)
        if prepared.local is not None:
            return self._race(prepared)
        with self._lock:
            avoiding, probe = self._avoiding, False
            if avoiding and time.monotonic() >= self._next_probe:
                # This request tries the server (once); the others keep running here meanwhile.
                probe, self._next_probe = True, time.monotonic() + self.probe_interval_s
        if avoiding and not probe:
            return self._run_here(prepared, avoiding, attempts=0)
        outcome = self._call(prepared.request, NO_RETRY if probe else self.retry)
        if outcome.error is not None:
            if not (self.fallback and outcome.error.status_code in _FALLBACK_CODES):
                raise outcome.error
            reason = str(outcome.error)
            with self._lock:
                # A request that went out before another was answered speaks of an older server:
                # this one runs here, but the client stays in split mode.
                if outcome.first > self._answered_at:
                    if not self._avoiding:
                        log.warning("running the tail on the device until server %s is back: %s", self.server, reason)
                        self._next_probe = time.monotonic() + self.probe_interval_s
                    self._avoiding = reason
            return self._run_here(prepared, reason, attempts=outcome.attempts)
        with self._lock:
            self._answered_at = time.monotonic()
            if self._avoiding:
                self._avoiding = ""
                log.info("server %s is back: split inference again", self.server)
        assert outcome.response is not None
        return self._finish(prepared, outcome.response, outcome.sent, outcome.received, outcome.attempts)

    def infer_image(self, image: np.ndarray) -> EdgeResult:
        """An HxWx3 uint8 image through the bundle's preprocessing, then `infer`."""
        preprocess = self._model.preprocess
        if preprocess is None:
            raise SplitInferError(
                f"bundle {str(self.bundle.path)!r} has no image preprocessing; call infer() with tensors"
            )
        return self.infer(preprocess(image))

    def infer_stream(self, inputs: Iterable[Inputs]) -> Iterator[EdgeResult]:
        """Results of `inputs` in order, over one InferStream call.

        Heads run in gRPC's sending thread, so the head of the next input overlaps the server's
        work on the previous one; each result's network_ms therefore includes waiting on the
        stream. The first failure (a refused message, a bad input, a broken stream) is raised where
        its result would have been yielded and ends the iteration: the call is cancelled, so inputs
        after it get no result (the exception is their answer). The stream has no deadline (it
        lasts as long as `inputs`); `timeout_s` applies to unary calls only. With a multi-cut
        bundle each input is sent split (the stream is the server's), at the cut the client would
        choose; replies on a stream queue behind each other, so they do not measure the link.
        """
        if self._stub is None:
            for item in inputs:
                yield self._local(self._prepare(item))
            return
        pending: dict[str, tuple[_Prepared, float]] = {}
        failures: list[Exception] = []

        def requests() -> Iterator[pb.InferRequest]:
            # An exception escaping here would make gRPC cancel the call and hide it; keep it, end
            # the requests, and raise it once the replies to what was sent have been yielded.
            try:
                for item in inputs:
                    prepared = self._prepare(item, offloading=True)
                    pending[prepared.request.request_id] = (prepared, time.perf_counter())
                    yield prepared.request
            except Exception as err:
                failures.append(err)

        call = self._stub.InferStream(requests(), metadata=self._metadata)
        try:
            for response in call:
                received = time.perf_counter()
                entry = pending.pop(response.request_id, None)
                if entry is None:
                    raise SplitInferError(
                        f"server {self.server} replied to request {response.request_id!r}, which was not sent"
                    )
                if response.HasField("error"):
                    code = _CODES_BY_NUMBER.get(response.error.code, grpc.StatusCode.UNKNOWN)
                    raise self._rpc_error(code, f"request {response.request_id}: {response.error.message}")
                yield self._finish(entry[0], response, entry[1], received, measures=False)
        except grpc.RpcError as err:
            raise self._rpc_error(err.code(), err.details()) from err
        finally:
            call.cancel()
        if failures:
            raise failures[0]
        if pending:
            raise SplitInferError(f"server {self.server} ended the stream without replying to {sorted(pending)}")

    def close(self) -> None:
        self._closed.set()
        if self._racers is not None:
            self._racers.shutdown(wait=True, cancel_futures=True)
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _prepare(self, inputs: Inputs, *, offloading: bool = False, racing: bool = False) -> _Prepared:
        """Chooses the cut (multi-cut bundles), runs the head and, when the cut has a tail, encodes
        the cut tensors into a request; `racing` starts the rest of the model here before encoding."""
        start, cpu_start = time.perf_counter(), time.thread_time()
        feed = self._as_feed(inputs)
        decision, codec = None, self.codec
        if self.adaptive is not None:
            if self._stub is not None and self.adaptive.settings.idle_probe_s > 0:
                self._first_probe.wait(_FIRST_PROBE_WAIT_S)
            decision = self.adaptive.decide(offloading=offloading, racing=racing)
            variant = self._variants[decision.choice.cut]
            codec = self._codec(decision.choice.codec)
            cut = self.head.run(feed, decision.choice.cut)
        else:
            variant = self.bundle
            cut = self.head.run(feed)
        ran = time.perf_counter()
        manifest = variant.manifest
        request = pb.InferRequest(
            request_id=uuid.uuid4().hex, model_id=manifest.model_id, bundle_hash=manifest.bundle_hash
        )
        local = None
        if self._stub is not None and manifest.has_tail:
            if racing:
                local = self._start_local(cut, manifest.cut_name)
            request.tensors.extend(self.encoder.encode(cut, codec, manifest.cut_name))
        device_cpu_ms = (time.thread_time() - cpu_start) * 1e3
        encode_ms = (time.perf_counter() - ran) * 1e3
        return _Prepared(cut, request, start, (ran - start) * 1e3, encode_ms, device_cpu_ms, variant, codec, decision, local)

    def _start_local(self, tensors: dict[str, np.ndarray], cut: str) -> _LocalRun:
        with self._lock:
            if self._racers is None:
                self._racers = concurrent.futures.ThreadPoolExecutor(_RACERS, thread_name_prefix="edge-local-tail")
        cancel = Cancel()

        def run() -> tuple[dict[str, np.ndarray], float, float]:
            started = time.perf_counter()
            outputs = self.local_tail.run(tensors, cut, cancel)
            done = time.perf_counter()
            return outputs, (done - started) * 1e3, done

        return _LocalRun(self._racers.submit(run), cancel)

    def _race(self, prepared: _Prepared) -> EdgeResult:
        """Sends the request while the local run goes on; the first answer wins, the other is
        cancelled. A server that cannot answer (the fallback codes) leaves the answer to the local
        run; any other refusal is raised."""
        assert self._stub is not None and prepared.local is not None
        local = prepared.local
        finished = threading.Event()
        received: list[float] = []
        sent = time.perf_counter()
        call = self._stub.Infer.future(prepared.request, timeout=self.timeout_s, metadata=self._metadata)

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
                error = self._rpc_error(err.code(), err.details())
                error.__cause__ = err
                if err.code() not in _FALLBACK_CODES:
                    self._stop_local(local)
                    raise error from err
                reason = str(error)
            else:
                self._stop_local(local)
                if response.request_id != prepared.request.request_id:
                    raise SplitInferError(
                        f"server {self.server} answered request {prepared.request.request_id!r} with the reply to {response.request_id!r}"
                    )
                result = self._finish(prepared, response, sent, received[0])
                return dataclasses.replace(result, raced=True, winner=SERVER)
        try:
            outputs, tail_ms, done = local.future.result()
        except Exception:
            # The local run failed (it should not: the bundle was verified): the server's answer,
            # then, whatever it is.
            log.exception("the local run of cut %s failed; waiting for the server", prepared.variant.manifest.cut_name)
            outcome = self._call(prepared.request, self.retry) if reason else self._await(call, sent)
            if outcome.error is not None:
                raise outcome.error
            assert outcome.response is not None
            return dataclasses.replace(
                self._finish(prepared, outcome.response, outcome.sent, outcome.received, outcome.attempts), raced=True, winner=SERVER
            )
        if not reason:
            call.cancel()
            if self.adaptive is not None and prepared.decision is not None:
                choice = prepared.decision.choice
                self.adaptive.observe_unfinished(prepared.request.ByteSize(), done - sent, (choice.decode_ms + choice.tail_ms) / 1e3)
        # The request went out: its bytes and codec are the record's, whoever answered.
        result = self._answered_here(prepared, outputs, tail_ms, done, reason=reason)
        return dataclasses.replace(
            result, bytes_sent=sum(len(t.data) for t in prepared.request.tensors), request_bytes=prepared.request.ByteSize(),
            codec=prepared.codec.name, raced=True, winner=DEVICE,
        )  # fmt: skip

    def _await(self, call: grpc.Future, sent: float) -> _Outcome:
        try:
            response = call.result()
        except grpc.RpcError as err:
            error = self._rpc_error(err.code(), err.details())
            error.__cause__ = err
            return _Outcome(1, error=error)
        return _Outcome(1, response, sent=sent, received=time.perf_counter())

    @staticmethod
    def _stop_local(local: _LocalRun) -> None:
        """Stops the local run and waits until it has: the device's core is free for what comes next."""
        local.cancel.cancel()
        try:
            local.future.result()
        except Cancelled:
            pass
        except Exception:
            log.exception("the cancelled local run failed")

    def _codec(self, name: str) -> Codec:
        """The table's codec by name ("-", all on the device: nothing is encoded)."""
        if name == "-":
            return self.codec
        if name not in self._codecs:
            self._codecs[name] = Codec.parse(name)
        return self._codecs[name]

    def _probe_when_idle(self) -> None:
        """Measures the RTT with a ListModels call (a few hundred bytes each way) at start and
        whenever no request has gone out for `idle_probe_s`; failures are the requests' business."""
        assert self.adaptive is not None and self._stub is not None and self._channel is not None
        idle_s = self.adaptive.settings.idle_probe_s
        try:
            # The first call on a channel also opens the connection (TCP and HTTP/2 handshakes,
            # more than one round trip): connect first so that the probes time round trips only.
            grpc.channel_ready_future(self._channel).result(timeout=_FIRST_PROBE_WAIT_S)
        except grpc.FutureTimeoutError:
            pass
        wait_s = 0.0
        while not self._closed.wait(wait_s):
            quiet_s = time.monotonic() - self.adaptive.last_activity
            if wait_s == 0.0 or quiet_s >= idle_s:
                sent = time.perf_counter()
                try:
                    self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s, metadata=self._metadata)
                except grpc.RpcError:
                    pass
                else:
                    self.adaptive.estimator.observe_rtt(time.perf_counter() - sent)
                finally:
                    self._first_probe.set()
                quiet_s = 0.0
            wait_s = max(idle_s - quiet_s, 0.05)

    def _as_feed(self, inputs: Inputs) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return inputs
        specs = self._model.inputs
        if len(specs) != 1:
            raise TensorSpecError(
                f"the model has inputs {[s.name for s in specs]}: pass a mapping from input name to array"
            )
        return {specs[0].name: np.asarray(inputs)}

    def _local(self, prepared: _Prepared) -> EdgeResult:
        """An edge-only bundle's result: the head's outputs, nothing sent."""
        timing = RequestTiming(
            head_ms=prepared.head_ms,
            encode_ms=0.0,
            network_ms=0.0,
            decode_ms=0.0,
            tail_ms=0.0,
            server_ms=0.0,
            output_decode_ms=0.0,
            total_ms=(time.perf_counter() - prepared.start) * 1e3,
            device_cpu_ms=prepared.device_cpu_ms,
        )
        return EdgeResult(
            dict(prepared.cut), timing, 0, 0, 0, prepared.request.request_id,
            cut=prepared.variant.manifest.cut_name, codec="-", decision=prepared.decision,
        )  # fmt: skip

    def _call(self, request: pb.InferRequest, retry: RetryPolicy) -> _Outcome:
        """Infer, sent again as `retry` allows; the reply, or the error of the last attempt."""
        assert self._stub is not None
        first = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            sent = time.perf_counter()
            try:
                response = self._stub.Infer(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                wait_s = self._retry_wait(err, retry, attempt, first)
                if wait_s is None:
                    error = self._rpc_error(err.code(), err.details(), attempt)
                    error.__cause__ = err
                    return _Outcome(attempt, error=error, first=first)
                time.sleep(wait_s)
                continue
            if response.request_id != request.request_id:
                # A retry resends the same request, so a reply can only ever be to this one.
                raise SplitInferError(
                    f"server {self.server} answered request {request.request_id!r} with the reply to {response.request_id!r}"
                )
            return _Outcome(attempt, response, sent=sent, received=time.perf_counter(), first=first)

    def _retry_wait(self, err: grpc.RpcError, retry: RetryPolicy, attempt: int, first: float) -> float | None:
        """Seconds to wait before sending the request again, or None when it must not be."""
        code = err.code()
        hint_ms = None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Without the hint it is gRPC refusing something too large: sending it again changes nothing.
            hint_ms = dict(err.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
            if hint_ms is None or not str(hint_ms).isdigit():
                return None
        elif code != grpc.StatusCode.UNAVAILABLE:
            return None
        if attempt >= retry.attempts:
            return None
        wait_s = retry.backoff_s(attempt, self._rng)
        if hint_ms is not None:
            wait_s = max(wait_s, int(hint_ms) / 1e3)
        if time.monotonic() + wait_s - first > retry.max_elapsed_s:
            return None
        return wait_s

    def _run_here(self, prepared: _Prepared, reason: str, attempts: int) -> EdgeResult:
        """The tail run on this device, for a request the server could not answer."""
        started = time.perf_counter()
        # The head's own tensors: exact, no codec in between.
        outputs = self.local_tail.run(prepared.cut, prepared.variant.manifest.cut_name)
        done = time.perf_counter()
        return self._answered_here(prepared, outputs, (done - started) * 1e3, done, reason=reason, attempts=attempts)

    @staticmethod
    def _answered_here(
        prepared: _Prepared, outputs: dict[str, np.ndarray], tail_ms: float, done: float, *, reason: str, attempts: int = 1
    ) -> EdgeResult:
        """The result of a request whose tail ran on this device (fallback when `reason` says why)."""
        timing = RequestTiming(
            head_ms=prepared.head_ms,
            encode_ms=prepared.encode_ms,
            network_ms=0.0,
            decode_ms=0.0,
            tail_ms=tail_ms,
            server_ms=0.0,
            output_decode_ms=0.0,
            total_ms=(done - prepared.start) * 1e3,
            device_cpu_ms=prepared.device_cpu_ms,
        )
        return EdgeResult(
            outputs=outputs,
            timing=timing,
            bytes_sent=0,
            request_bytes=0,
            response_bytes=0,
            request_id=prepared.request.request_id,
            attempts=attempts,
            fallback=bool(reason),
            fallback_reason=reason,
            cut=prepared.variant.manifest.cut_name,
            codec="-",
            decision=prepared.decision,
        )

    def _finish(
        self, prepared: _Prepared, response: pb.InferResponse, sent: float, received: float, attempts: int = 1,
        *, measures: bool = True,
    ) -> EdgeResult:
        outputs = {tensor.name: decode(tensor) for tensor in response.outputs}
        done = time.perf_counter()
        missing = [s.name for s in prepared.variant.manifest.outputs if s.name not in outputs]
        if missing:
            raise SplitInferError(f"server {self.server}: the reply lacks outputs {missing}; it has {sorted(outputs)}")
        server = response.timing
        rpc_ms = (received - sent) * 1e3
        if self.adaptive is not None and measures and attempts == 1:
            # A retried request's wall time includes backoff: not a measurement of the link.
            self.adaptive.observe(prepared.request.ByteSize(), rpc_ms / 1e3, server.total_ms / 1e3)
        timing = RequestTiming(
            head_ms=prepared.head_ms,
            encode_ms=prepared.encode_ms,
            # Serialisation on both sides, transfer and round trips: all the call took beyond the
            # server's own work. Two clocks measure it, so clamp the rounding below zero.
            network_ms=max(0.0, rpc_ms - server.total_ms),
            decode_ms=server.decode_ms,
            tail_ms=server.tail_ms,
            server_ms=server.total_ms,
            output_decode_ms=(done - received) * 1e3,
            total_ms=(done - prepared.start) * 1e3,
            device_cpu_ms=prepared.device_cpu_ms,
        )
        return EdgeResult(
            outputs=outputs,
            timing=timing,
            bytes_sent=sum(len(t.data) for t in prepared.request.tensors),
            request_bytes=prepared.request.ByteSize(),
            response_bytes=response.ByteSize(),
            request_id=prepared.request.request_id,
            attempts=attempts,
            cut=prepared.variant.manifest.cut_name,
            codec=prepared.codec.name,
            decision=prepared.decision,
        )

    def _rpc_error(self, code: grpc.StatusCode, details: str | None, attempts: int = 1) -> SplitInferError:
        message = f"server {self.server}: {code.name}: {details}"
        if attempts > 1:
            message += f" (after {attempts} attempts)"
        hint = self._hint(code)
        error = _ERRORS_BY_CODE.get(code, SplitInferError)(f"{message} ({hint})" if hint else message)
        error.status_code = code
        return error

    def _hint(self, code: grpc.StatusCode) -> str:
        """What to check when gRPC's own words do not say it: a refused TLS handshake reads as a
        closed socket, and a plaintext client sees nothing of TLS at all."""
        if code == grpc.StatusCode.UNAVAILABLE and self.tls == "off":
            return "is the server running there, and does it need TLS? then pass tls_ca (--tls-ca)"
        if code == grpc.StatusCode.UNAVAILABLE and self.tls == "tls":
            return "is the server running there, and does it require client certificates? then pass tls_cert and tls_key"
        if code == grpc.StatusCode.UNAUTHENTICATED and self._metadata is None:
            return "the server needs a token: pass token (--token)"
        return ""


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    if token is None:
        return None
    # gRPC refuses such metadata only at the first call, and with words that do not say why.
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise SplitInferError("token: must be non-empty printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)
