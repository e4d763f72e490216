"""The device's side of split inference: run the head, send the cut tensors, receive the outputs.

`EdgeClient` holds a bundle's head and a channel to a server that serves the matching tail
(edge_runtime.transport); its options are one `EdgeConfig` (edge_runtime.config). One `infer` call
runs the head, encodes each cut tensor with the codec, calls Infer and decodes the outputs, timing
every step so the result attributes each millisecond (edge_runtime.results). A bundle without a
tail runs entirely here and needs no server. The client composes the rest: a request the server
could not take is sent again (edge_runtime.retry); with `fallback` the tail runs here while the
server cannot be used (edge_runtime.fallback); with `race_local` the device's own run races the
server (edge_runtime.race). Streams (`infer_stream`) are neither retried nor raced: their first
failure ends them.

Adaptive: given a multi-cut bundle (protos.bundle), the client chooses the cut and codec before
each request (edge_runtime.adaptive) from its own estimate of the uplink (edge_runtime.estimator):
every unary request's transfer measures the bandwidth, and a tiny call when the client has been
idle measures the RTT (edge_runtime.probe). Each cut is an ordinary bundle on the server under its
own bundle_hash, which the request names: a switch costs no extra round trip. The result names the
cut and codec it used. With racing, every request of a multi-cut bundle is sent split (the table's
best offloading cut), so the link is always being measured; a raced request the device answered
puts a ceiling on the estimate. Without racing, an exploration (a request sent split while the
device runs everything itself) that has no reply `AdaptiveSettings.abandon_factor` × its
typical latency after it began is cancelled and the rest of the model runs here: the cheap
form of racing, which costs the device's run only when the exploration is late.

The head, the tensor encoder and the local tail are seams (edge_runtime.parts): given to the
constructor, they replace the ones the client would make (an emulated device paces them).

Updates over the air (EdgeConfig.update_cache, edge_runtime.updates): `update()` fetches the
server's newest version of a single-cut bundle, verifies it and loads its head before it switches.
What a request needs of the bundle is one `_Version`, which a request takes when it starts and
keeps to its end: a switch never lands mid-request, and nothing waits for it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np

from edge_runtime.adaptive import AdaptiveController
from edge_runtime.config import EdgeConfig
from edge_runtime.fallback import FallbackState
from edge_runtime.local_tail import LocalTail
from edge_runtime.parts import Encoder, Head, Tail, TensorEncoder, load_head
from edge_runtime.probe import RttProbe
from edge_runtime.race import DEVICE, SERVER, LocalRunner, race
from edge_runtime.results import Answer, EdgeResult, Prepared, build_result
from edge_runtime.retry import NO_RETRY, Outcome, send
from edge_runtime.stream_deadline import StreamDeadline
from edge_runtime.transport import Transport, channel_credentials, status_code
from edge_runtime.updates import BundleUpdates, UpdateChecker
from protos.bundle import Bundle, Manifest, MultiCutBundle, is_multi_cut, load_bundle, load_multi_cut_bundle
from protos.codec import Codec, decode
from protos.errors import SplitInferError, TensorSpecError
from protos.result_form import ResultForm
from protos.signing import load_trusted_keys, verify_bundle_signature
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

Inputs = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class _Version:
    """One version of the bundle, loaded: all a request needs of it."""

    bundle: Bundle | MultiCutBundle
    variants: dict[str, Bundle]
    # What every cut shares: the model's inputs, outputs and preprocessing.
    model: Manifest
    codec: Codec
    result_form: ResultForm
    output_names: list[str]
    result_spec: pb.ResultSpec
    head: Head
    local_tail: Tail
    local_runs: LocalRunner


def _check_updatable(
    bundle: Bundle | MultiCutBundle, server: str | None, config: EdgeConfig, given_parts: tuple[object, ...]
) -> None:
    """Refuses updates (EdgeConfig.update_cache) where a newer version could not be run as the first."""
    where = f"update_cache {str(config.update_cache)!r}"
    if isinstance(bundle, MultiCutBundle):
        raise SplitInferError(f"{where}: over the air a device updates single-cut bundles, not multi-cut ones")
    if server is None or not bundle.manifest.has_tail:
        raise SplitInferError(f"{where}: bundle {str(bundle.path)!r} runs without a server, which updates come from")
    if any(part is not None for part in given_parts):
        raise SplitInferError(f"{where}: a newer version runs the client's own head and tail, not the ones given")


class EdgeClient:
    """Runs `bundle`'s head here and its tail on `server` ("host:port", or replicas to balance over:
    edge_runtime.balancing; None for an edge-only bundle), as `config` says (edge_runtime.config).
    `head`, `encoder` and `local_tail` replace the parts the client would make
    (edge_runtime.parts); a local tail made here is made from the head in use."""

    def __init__(
        self,
        bundle: str | Path | Bundle | MultiCutBundle,
        server: str | None,
        config: EdgeConfig = EdgeConfig(),
        *,
        head: Head | None = None,
        encoder: Encoder | None = None,
        local_tail: Tail | None = None,
    ) -> None:
        trusted = load_trusted_keys(config.trust_keys) if config.trust_keys else ()
        if trusted:
            # Before anything of the bundle is read: its manifest pins every file loaded below.
            path = bundle.path if isinstance(bundle, (Bundle, MultiCutBundle)) else Path(bundle)
            verify_bundle_signature(path, trusted)
        if not isinstance(bundle, (Bundle, MultiCutBundle)):
            bundle = load_multi_cut_bundle(bundle) if is_multi_cut(bundle) else load_bundle(bundle)
        self.config = config
        self.adaptive = self._adaptive_controller(bundle, config)
        if isinstance(bundle, MultiCutBundle):
            manifest = bundle.manifest.cuts[0]
            has_tail = any(v.manifest.has_tail for v in bundle.variants)
        else:
            manifest = bundle.manifest
            has_tail = manifest.has_tail
        if has_tail and server is None:
            raise SplitInferError(
                f"bundle {str(bundle.path)!r} has a tail (cut {manifest.cut_name!r}): a server address is needed"
            )
        if config.update_cache is not None:
            _check_updatable(bundle, server, config, given_parts=(head, local_tail))
        self._codecs: dict[str, Codec] = {}
        self.server = server
        self.tls = config.tls_mode
        credentials = channel_credentials(config)
        self.encoder = encoder if encoder is not None else TensorEncoder()
        self._transport = Transport(server, config, credentials) if has_tail and server is not None else None
        self._updates = None
        try:
            if config.update_cache is not None and self._transport is not None and isinstance(bundle, Bundle):
                with_tail = config.fallback or config.race_local
                self._updates = BundleUpdates(self._transport, config.update_cache, trusted, with_tail=with_tail)
            # Everything a request needs of the bundle: a request takes the version current when it
            # starts and keeps it to its end, so an update (`update`) switches between requests.
            self._version = self._first_version(bundle, head, local_tail)
        except BaseException:
            if self._transport is not None:
                self._transport.close()
            raise
        self._retired: list[_Version] = []
        self._updating = threading.Lock()
        self._fallback = FallbackState(
            server, enabled=config.fallback and has_tail, probe_interval_s=config.probe_interval_s
        )
        self._race_local = config.race_local and has_tail
        self._rng = random.Random()
        self._probe = None
        if self._transport is not None and self.adaptive is not None and config.adaptive.idle_probe_s > 0:
            self._probe = RttProbe(self._transport, self.adaptive)
        self._update_checker = None
        if self._updates is not None and config.update_interval_s > 0:
            self._update_checker = UpdateChecker(lambda: self.update(retry_refused=False), config.update_interval_s)

    def _first_version(self, bundle: Bundle | MultiCutBundle, head: Head | None, local_tail: Tail | None) -> _Version:
        """The newest verified version in the update cache when there is one newer than `bundle`
        and it loads, else `bundle`."""
        updates = self._updates
        if updates is not None and isinstance(bundle, Bundle):
            cached = updates.newest_cached(bundle)
            try:
                if cached is not None:
                    return self._load_version(cached)
            except SplitInferError as err:
                log.warning("%s", updates.refuse(cached, f"it does not load: {err}"))
        return self._load_version(bundle, head, local_tail)

    def _load_version(
        self, bundle: Bundle | MultiCutBundle, head: Head | None = None, local_tail: Tail | None = None
    ) -> _Version:
        """`bundle` loaded to run: its head's session, its result form, the rest of the model here."""
        config = self.config
        if isinstance(bundle, MultiCutBundle):
            variants = {v.manifest.cut_name: v for v in bundle.variants}
            # What every cut shares: the model's inputs, outputs and preprocessing.
            manifest = bundle.manifest.cuts[0]
        else:
            variants = {bundle.manifest.cut_name: bundle}
            manifest = bundle.manifest
        codec = config.codec if config.codec is not None else Codec.parse(manifest.codec)
        # The outputs' form: asked for in every request when the config names one; else the
        # bundle's default, which the server applies (the bundle hash pins it on both sides).
        result_form = config.result if config.result is not None else manifest.result_form
        result_form.check_outputs(manifest.outputs)
        head = head if head is not None else load_head(bundle, config.threads, config.head_key)
        # The rest of the model, for fallback and racing.
        local_tail = local_tail if local_tail is not None else LocalTail(bundle, head, threads=config.threads)
        return _Version(
            bundle,
            variants,
            manifest,
            codec,
            result_form,
            result_form.output_names([s.name for s in manifest.outputs]),
            result_form.to_wire(),
            head,
            local_tail,
            LocalRunner(local_tail),
        )

    @property
    def bundle(self) -> Bundle | MultiCutBundle:
        """The bundle in use (the newest verified version, with updates)."""
        return self._version.bundle

    @property
    def head(self) -> Head:
        return self._version.head

    @property
    def local_tail(self) -> Tail:
        return self._version.local_tail

    @property
    def codec(self) -> Codec:
        return self._version.codec

    @property
    def result_form(self) -> ResultForm:
        return self._version.result_form

    @property
    def update_error(self) -> Exception | None:
        """Why the last periodic update check failed (a refused update included); None when it did not."""
        return None if self._update_checker is None else self._update_checker.last_error

    def update(self, *, retry_refused: bool = True) -> bool:
        """Asks the server for a newer version of the bundle; fetches it into the update cache (or
        finds it there), verifies it (edge_runtime.updates) and loads its head, and only then
        switches to it: requests under way finish on the version they started with, later ones
        run the new one. True when it switched, False when the bundle in use is the newest.

        A version that does not verify or whose head does not load raises UpdateRefusedError, and
        the version in use goes on serving; so does one that cannot be fetched (the server's
        error). `retry_refused=False` (the periodic check) does not fetch again a version refused
        in the last REFUSED_RETRY_S."""
        if self._updates is None:
            raise SplitInferError("this client takes no updates: make it with EdgeConfig(update_cache=DIR)")
        with self._updating:
            current = self._version
            assert isinstance(current.bundle, Bundle)
            newer = self._updates.newer(current.bundle, retry_refused=retry_refused)
            if newer is None:
                return False
            try:
                version = self._load_version(newer)
            except SplitInferError as err:
                raise self._updates.refuse(newer, f"it does not load: {err}") from err
            self._retired.append(current)
            self._version = version
        log.info(
            "bundle of model %r updated from version %d to %d (bundle %s, %s)",
            newer.manifest.model_id,
            current.model.version,
            newer.manifest.version,
            newer.manifest.bundle_hash[:12],
            newer.path,
        )
        return True

    @staticmethod
    def _adaptive_controller(bundle: Bundle | MultiCutBundle, config: EdgeConfig) -> AdaptiveController | None:
        """A multi-cut bundle's chooser of cut and codec, from its decision table; None for one cut."""
        if not isinstance(bundle, MultiCutBundle):
            return None
        if config.codec is not None:
            raise SplitInferError(
                f"codec {config.codec.name!r}: a multi-cut bundle's decision table chooses the codec of each request"
            )
        table = bundle.decision_table()
        initial_rtt_ms = table.planning_rtt_ms if config.initial_rtt_ms is None else config.initial_rtt_ms
        return AdaptiveController(
            table, config.adaptive, initial_bandwidth_bps=config.initial_bandwidth_bps, initial_rtt_ms=initial_rtt_ms
        )

    @property
    def in_fallback(self) -> bool:
        """True while the server is being avoided (requests run here, probing it now and then)."""
        return bool(self._fallback.avoiding)

    def infer(self, inputs: Inputs) -> EdgeResult:
        """One request; a bare array is the model's single input."""
        version = self._version
        prepared = self._prepare(inputs, version, racing=self._race_local)
        if self._transport is None or not prepared.split:
            return self._local(prepared, version)
        if prepared.local is not None:
            return self._race(prepared, version)
        avoiding, probe = self._fallback.route()
        if avoiding and not probe:
            return self._run_here(prepared, version, avoiding, attempts=0)
        if self._abandons(prepared, version):
            return self._explore(prepared, version)
        outcome = send(self._transport, prepared.request, NO_RETRY if probe else self.config.retry, self._rng)
        if outcome.error is not None:
            if not self._fallback.covers(outcome.error):
                raise outcome.error
            reason = str(outcome.error)
            self._fallback.failed(outcome.first, reason)
            return self._run_here(prepared, version, reason, attempts=outcome.attempts)
        self._fallback.answered()
        return self._from_server(prepared, outcome, version)

    def infer_image(self, image: np.ndarray) -> EdgeResult:
        """An HxWx3 uint8 image through the bundle's preprocessing, then `infer`."""
        preprocess = self._version.model.preprocess
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
        after it get no result (the exception is their answer). The stream lasts as long as
        `inputs`, but each reply must come within `timeout_s` of its request: a server that stops
        answering ends the stream with ServerUnavailableError. With a multi-cut
        bundle each input is sent split (the stream is the server's), at the cut the client would
        choose; replies on a stream queue behind each other, so they do not measure the link.
        """
        transport = self._transport
        # A stream runs on the version in use when it starts (an update applies to the next one).
        version = self._version
        if transport is None:
            for item in inputs:
                yield self._local(self._prepare(item, version), version)
            return
        pending: dict[str, tuple[Prepared, float]] = {}
        failures: list[Exception] = []

        def requests() -> Iterator[pb.InferRequest]:
            # An exception escaping here would make gRPC cancel the call and hide it; keep it, end
            # the requests, and raise it once the replies to what was sent have been yielded.
            try:
                for item in inputs:
                    prepared = self._prepare(item, version, offloading=True)
                    pending[prepared.request.request_id] = (prepared, time.perf_counter())
                    yield prepared.request
            except Exception as err:
                failures.append(err)

        transport.connect(self.config.timeout_s)
        call = transport.infer_stream(requests())
        watchdog = StreamDeadline(call, pending, self.config.timeout_s)
        try:
            for response in call:
                received = time.perf_counter()
                entry = pending.pop(response.request_id, None)
                if entry is None:
                    raise SplitInferError(
                        f"server {self.server} replied to request {response.request_id!r}, which was not sent"
                    )
                if response.HasField("error"):
                    code = status_code(response.error.code)
                    raise transport.error(code, f"request {response.request_id}: {response.error.message}")
                outcome = Outcome(1, response, sent=entry[1], received=received)
                yield self._from_server(entry[0], outcome, version, measures=False)
        except grpc.RpcError as err:
            if watchdog.expired is not None:
                raise transport.error(grpc.StatusCode.DEADLINE_EXCEEDED, watchdog.expired) from err
            raise transport.error(err.code(), err.details()) from err
        finally:
            watchdog.stop()
            call.cancel()
        if failures:
            raise failures[0]
        if pending:
            raise SplitInferError(f"server {self.server} ended the stream without replying to {sorted(pending)}")

    def close(self) -> None:
        if self._update_checker is not None:
            self._update_checker.close()
        if self._probe is not None:
            self._probe.close()
        for version in (*self._retired, self._version):
            version.local_runs.close()
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _prepare(
        self, inputs: Inputs, version: _Version, *, offloading: bool = False, racing: bool = False
    ) -> Prepared:
        """Chooses the cut (multi-cut bundles), runs the head and, when the cut has a tail, encodes
        the cut tensors into a request; `racing` starts the rest of the model here before encoding."""
        start, cpu_start = time.perf_counter(), time.thread_time()
        feed = self._as_feed(inputs, version)
        decision, codec, variant = None, version.codec, version.bundle
        if self.adaptive is not None:
            if self._probe is not None:
                self._probe.wait_first()
            decision = self.adaptive.decide(offloading=offloading, racing=racing)
            variant = version.variants[decision.choice.cut]
            codec = self._codec(decision.choice.codec, version)
            cut = version.head.run(feed, decision.choice.cut)
        else:
            cut = version.head.run(feed)
        ran = time.perf_counter()
        manifest = variant.manifest
        # 128 random bits as 32 hex digits: a uuid4's worth, without uuid's object.
        request_id = os.urandom(16).hex()
        local = None
        if self._transport is not None and manifest.has_tail:
            request = pb.InferRequest(
                request_id=request_id, model_id=manifest.model_id, bundle_hash=manifest.bundle_hash
            )
            if self.config.result is not None:
                request.result.CopyFrom(version.result_spec)
            if racing:
                local = version.local_runs.start(cut, manifest.cut_name)
            request.tensors.extend(self.encoder.encode(cut, codec, manifest.cut_name, manifest.cut_clamps))
        else:
            request = pb.InferRequest(request_id=request_id)  # nothing is sent: the id is all it holds
        device_cpu_ms = (time.thread_time() - cpu_start) * 1e3
        encode_ms = (time.perf_counter() - ran) * 1e3
        head_ms = (ran - start) * 1e3
        return Prepared(cut, request, start, head_ms, encode_ms, device_cpu_ms, variant, codec, decision, local)

    def _race(self, prepared: Prepared, version: _Version) -> EdgeResult:
        """The answer of whoever answers first, the server or the local run (edge_runtime.race)."""
        assert self._transport is not None and prepared.local is not None
        outcome = race(self._transport, prepared.request, prepared.local, self.config.retry, self._rng)
        if outcome.server is not None:
            return self._from_server(prepared, outcome.server, version, winner=SERVER)
        assert outcome.outputs is not None
        if not outcome.reason and self.adaptive is not None and prepared.decision is not None:
            # The server did not answer in the time the device took: a ceiling on the link's rate.
            choice = prepared.decision.choice
            server_s = (choice.decode_ms + choice.tail_ms) / 1e3
            self.adaptive.observe_unfinished(prepared.request.ByteSize(), outcome.done - outcome.sent, server_s)
        answer = Answer(version.result_form.select(outcome.outputs), outcome.done, tail_ms=outcome.tail_ms)
        return build_result(prepared, answer, reason=outcome.reason, winner=DEVICE)

    def _abandons(self, prepared: Prepared, version: _Version) -> bool:
        """Whether `prepared` is an exploration to abandon for the device's own run once late:
        the setting asks for it and the rest of the model can run here from its cut."""
        decision = prepared.decision
        if decision is None or not decision.exploring or not self.config.adaptive.abandon_factor:
            return False
        if isinstance(version.local_tail, LocalTail) and version.local_tail.source != "segments":
            return prepared.variant.tail_path is not None
        return True

    def _explore(self, prepared: Prepared, version: _Version) -> EdgeResult:
        """An exploration, sent once; with no reply `abandon_factor` × its typical latency after
        the request began, it is cancelled and the rest of the model runs here (the cheap form of
        racing: the device's run starts only when the exploration is already late). Its bytes had
        not crossed by then: a ceiling on the link's rate."""
        assert self._transport is not None and self.adaptive is not None and prepared.decision is not None
        decision = prepared.decision
        factor = self.config.adaptive.abandon_factor
        sent = time.perf_counter()
        call = self._transport.infer_future(prepared.request)
        try:
            response = call.result(timeout=max(0.0, prepared.start + factor * decision.typical_ms / 1e3 - sent))
        except grpc.FutureTimeoutError:
            call.cancel()
            elapsed_s = time.perf_counter() - sent
            choice = decision.choice
            server_s = (choice.decode_ms + choice.tail_ms) / 1e3
            self.adaptive.observe_unfinished(prepared.request.ByteSize(), elapsed_s, server_s)
            reason = (
                f"exploration at {choice.cut!r} abandoned: no reply {elapsed_s * 1e3:.0f} ms after it was sent, "
                f"{factor:g} × its typical {decision.typical_ms:.0f} ms after the request began"
            )
            return self._run_here(prepared, version, reason, attempts=1)
        except grpc.RpcError as err:
            error = self._transport.error(err.code(), err.details())
            if not self._fallback.covers(error):
                raise error from err
            self._fallback.failed(time.monotonic(), str(error))
            return self._run_here(prepared, version, str(error), attempts=1)
        received = time.perf_counter()
        self._transport.check_reply_to(prepared.request, response)
        self._fallback.answered()
        return self._from_server(prepared, Outcome(1, response, sent=sent, received=received), version)

    def _codec(self, name: str, version: _Version) -> Codec:
        """The table's codec by name ("-", all on the device: nothing is encoded)."""
        if name == "-":
            return version.codec
        if name not in self._codecs:
            self._codecs[name] = Codec.parse(name)
        return self._codecs[name]

    def _as_feed(self, inputs: Inputs, version: _Version) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return inputs
        specs = version.model.inputs
        if len(specs) != 1:
            raise TensorSpecError(
                f"the model has inputs {[s.name for s in specs]}: pass a mapping from input name to array"
            )
        return {specs[0].name: np.asarray(inputs)}

    def _local(self, prepared: Prepared, version: _Version) -> EdgeResult:
        """An edge-only cut's result: the head's outputs, nothing sent."""
        return build_result(prepared, Answer(version.result_form.select(prepared.cut), time.perf_counter()))

    def _run_here(self, prepared: Prepared, version: _Version, reason: str, attempts: int) -> EdgeResult:
        """The tail run on this device, for a request the server could not answer."""
        started = time.perf_counter()
        # The head's own tensors: exact, no codec in between.
        cut = prepared.variant.manifest.cut_name
        outputs = version.result_form.select(version.local_tail.run(prepared.cut, cut))
        done = time.perf_counter()
        answer = Answer(outputs, done, tail_ms=(done - started) * 1e3)
        return build_result(prepared, answer, attempts=attempts, reason=reason)

    def _from_server(
        self, prepared: Prepared, outcome: Outcome, version: _Version, *, measures: bool = True, winner: str = ""
    ) -> EdgeResult:
        """The result of the server's reply; `measures`: whether its wall time measures the link."""
        response = outcome.response
        assert response is not None
        outputs = {tensor.name: decode(tensor) for tensor in response.outputs}
        done = time.perf_counter()
        missing = [name for name in version.output_names if name not in outputs]
        if missing:
            raise SplitInferError(f"server {self.server}: the reply lacks outputs {missing}; it has {sorted(outputs)}")
        if self.adaptive is not None and prepared.decision is not None:
            # Streams' replies too: they queue behind each other on the link, not in the server.
            self.adaptive.observe_server(response.timing, prepared.decision.choice)
        if self.adaptive is not None and measures and outcome.attempts == 1:
            # A retried request's wall time includes backoff: not a measurement of the link.
            rpc_s = outcome.received - outcome.sent
            self.adaptive.observe(prepared.request.ByteSize(), rpc_s, response.timing.total_ms / 1e3)
        answer = Answer(outputs, done, response=response, sent=outcome.sent, received=outcome.received)
        return build_result(prepared, answer, attempts=outcome.attempts, winner=winner)
