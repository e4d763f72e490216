"""The server's core: the tails of the served bundles, and one request in, one response out.

`TailService` holds an onnxruntime session per served bundle, keyed by model id and then bundle
hash, so one server can serve several models and several exports of the same model side by side.
`infer` checks a request against the served bundle's manifest before touching its bytes (model,
hash, tensor names, dtypes and shapes; the payload size then follows from the manifest, not from
the sender), decodes the cut tensors, runs the tail and encodes the outputs in the form the
request asks for (protos.result_form: a codec, server-side top-k), else the bundle's default. The tail runs
through the model's queue (cloud_runtime.batch_queue): the requests of a bundle exported
`batchable` that arrive within `BatchingConfig.window_ms` run as one batch; a full queue refuses
the request (QueueFullError, RESOURCE_EXHAUSTED with a retry hint). A request whose deadline (a
`time.monotonic()` instant the caller passes) has passed is dropped before its tail runs: nobody
waits for that answer any more, and the work would delay the requests behind it. It knows nothing
about gRPC transport: every refusal is a `SplitInferError` whose `status_code` the servicer sends.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import onnxruntime as ort

from cloud_runtime.batch_queue import (
    BatchingConfig,
    BatchObserver,
    DeadlineExceededError,
    ModelQueue,
    run_together,
    signature,
)
from protos.bundle import Bundle, TensorSpec
from protos.codec import decode, wire_dtype
from protos.errors import (
    BundleError,
    BundleMismatchError,
    CodecError,
    SplitInferError,
    TensorSpecError,
    UnknownModelError,
)
from protos.result_form import ResultForm
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)


class TailRunError(SplitInferError):
    """The tail failed on a request that passed every check: a server-side fault, not bad input."""

    status_code = grpc.StatusCode.INTERNAL


def choose_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (CPU stays as the fallback for unsupported ops)."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class _Tail:
    bundle: Bundle
    session: ort.InferenceSession
    cut: dict[str, TensorSpec]
    output_names: tuple[str, ...]

    def run(self, feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        try:
            return self.session.run(list(self.output_names), dict(feed))
        except Exception as err:
            rows = next(iter(feed.values())).shape[0] if feed else 0
            raise TailRunError(
                f"model {self.bundle.manifest.model_id!r}: the tail failed on a batch of {rows} row(s): "
                f"{type(err).__name__}: {err}"
            ) from err


class TailService:
    """Runs the tails of `bundles`; `threads` sets onnxruntime's intra-op threads (None: its default).

    `batching`: how each model's queue batches and bounds its requests. `observer` is told of every
    batch and queue depth (the server's metrics). `close()` stops the queues' threads."""

    def __init__(
        self,
        bundles: Iterable[Bundle],
        *,
        threads: int | None = None,
        batching: BatchingConfig = BatchingConfig(),
        observer: BatchObserver | None = None,
        reject_non_finite: bool = False,
    ) -> None:
        self.providers = choose_providers()
        # NaN and ±inf are valid floats on the wire; a deployment whose model has no use for them
        # refuses them rather than answering garbage.
        self._reject_non_finite = reject_non_finite
        log.info("tail execution providers: %s", ", ".join(self.providers))
        options = ort.SessionOptions()
        # onnxruntime's workers spin after each run by default: that wins microseconds on an idle
        # dedicated host and loses milliseconds where they share cores with gRPC's own threads,
        # the other tails and (in tests and benchmarks) the client. Measured with bench/e2e.py.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        self._options = options
        self.batching = batching
        self._tails: dict[str, dict[str, _Tail]] = {}
        for bundle in bundles:
            self._load(bundle)
        if not self._tails:
            raise BundleError("no bundles to serve")
        self.bundles = tuple(tail.bundle for served in self._tails.values() for tail in served.values())
        # Publishing a version (another thread) replaces the tuple and the model's dict whole, so
        # a request looking a tail up never sees one half made.
        self._publishing = threading.Lock()
        self._queues = {model_id: ModelQueue(model_id, batching, observer) for model_id in self._tails}

    def queue_depth(self, model_id: str) -> int:
        """Requests of `model_id` waiting for their batch."""
        return self._queues[model_id].depth

    def close(self) -> None:
        """Stops the batching threads; requests still queued are refused (call after the server stopped)."""
        for queue in self._queues.values():
            queue.close()

    @property
    def served(self) -> dict[str, list[str]]:
        """Model id → bundle hashes of the served tails."""
        return {model_id: list(served) for model_id, served in self._tails.items()}

    def list_models(self) -> pb.ListModelsResponse:
        newest = {model_id: _newest(served) for model_id, served in self._tails.items()}
        return pb.ListModelsResponse(
            bundles=[
                pb.ServedBundle(
                    model_id=model_id,
                    bundle_hash=bundle_hash,
                    cut=[pb.Tensor(name=s.name, dtype=wire_dtype(s.dtype), shape=s.shape) for s in tail.cut.values()],
                    version=tail.bundle.manifest.version,
                    newest=bundle_hash == newest[model_id],
                )
                for model_id, served in self._tails.items()
                for bundle_hash, tail in served.items()
            ]
        )

    def infer(self, request: pb.InferRequest, *, deadline: float | None = None) -> pb.InferResponse:
        """The tail's outputs for one request, in the form it asks for, or the SplitInferError that
        refuses it.

        `deadline`: a `time.monotonic()` instant after which the answer is of no use (None: none).
        """
        prepared = self._prepare(request, deadline)
        tail = prepared.tail
        # The queue drops it if the deadline passes while it waits for its batch.
        result = self._queues[tail.bundle.manifest.model_id].submit(
            tail.bundle.manifest.bundle_hash,
            tail.run,
            prepared.feed,
            batchable=tail.bundle.manifest.batchable,
            deadline=deadline,
            describe=prepared.describe,
        )
        expected_wait_s = self._queues[tail.bundle.manifest.model_id].expected_wait_s
        return _respond(prepared, result.outputs, result.tail_ms, expected_wait_s * 1e3)

    def infer_batch(self, requests: Sequence[pb.InferRequest]) -> list[pb.InferResponse | SplitInferError]:
        """Each request's response or refusal, the requests batched by the caller (Ray Serve's
        `serve.batch`) rather than by this service's queues: those that can share a tail call do."""
        outcomes: dict[int, pb.InferResponse | SplitInferError] = {}
        groups: dict[tuple, list[tuple[int, _Prepared]]] = {}
        for index, request in enumerate(requests):
            try:
                prepared = self._prepare(request, None)
            except SplitInferError as err:
                outcomes[index] = err
                continue
            manifest = prepared.tail.bundle.manifest
            key = (
                (manifest.model_id, manifest.bundle_hash, signature(prepared.feed)) if manifest.batchable else (index,)
            )
            groups.setdefault(key, []).append((index, prepared))
        for members in groups.values():
            started = time.perf_counter()
            try:
                rows = run_together(
                    members[0][1].tail.run, [prepared.feed for _, prepared in members], members[0][1].describe
                )
            except SplitInferError as err:
                for index, _ in members:
                    outcomes[index] = err
                continue
            tail_ms = (time.perf_counter() - started) * 1e3
            for (index, prepared), outputs in zip(members, rows):
                outcomes[index] = _respond(prepared, outputs, tail_ms)
        return [outcomes[index] for index in range(len(requests))]

    def _prepare(self, request: pb.InferRequest, deadline: float | None) -> _Prepared:
        """Checks `request` against its bundle's manifest and decodes its tensors."""
        start = time.perf_counter()
        tail = self._lookup(request.model_id, request.bundle_hash)
        prefix = f"model {request.model_id!r}"
        _check_deadline(prefix, deadline, "decoding")
        _check_names(prefix, [t.name for t in request.tensors], list(tail.cut))
        form = _result_form(prefix, request, tail.bundle)
        feed: dict[str, np.ndarray] = {}
        for tensor in request.tensors:
            spec = tail.cut[tensor.name]
            _check_spec(prefix, tensor, spec)
            # The declared shape is now the manifest's, so the payload size decode insists on is
            # too; a -1 dimension is bounded by decode's element limit.
            feed[tensor.name] = decode(tensor)
            if (
                self._reject_non_finite
                and feed[tensor.name].dtype.kind == "f"
                and not np.isfinite(feed[tensor.name]).all()
            ):
                raise TensorSpecError(
                    f"{prefix}: tensor {tensor.name!r} holds NaN or infinite values, which this server refuses"
                )
        return _Prepared(request.request_id, tail, feed, form, prefix, start, time.perf_counter())

    def _load(self, bundle: Bundle) -> None:
        """Loads `bundle`'s tail beside those of its model (refused: a duplicate, a version tie)."""
        manifest = bundle.manifest
        if bundle.tail_path is None:
            raise BundleError(
                f"bundle {str(bundle.path)!r} (model {manifest.model_id!r}) has no tail: "
                "it runs entirely on the device and cannot be served"
            )
        served = dict(self._tails.get(manifest.model_id, {}))
        if manifest.bundle_hash in served:
            raise BundleError(
                f"bundle {str(bundle.path)!r} duplicates {str(served[manifest.bundle_hash].bundle.path)!r} "
                f"(model {manifest.model_id!r}, bundle_hash {manifest.bundle_hash})"
            )
        same = [t.bundle for t in served.values() if manifest.version and t.bundle.manifest.version == manifest.version]
        if same:
            raise BundleError(
                f"bundle {str(bundle.path)!r} and {str(same[0].path)!r} are both version {manifest.version} of model "
                f"{manifest.model_id!r}: a device could not tell which is newer"
            )
        session = ort.InferenceSession(str(bundle.tail_path), self._options, providers=self.providers)
        output_names = _check_tail(bundle, session)
        served[manifest.bundle_hash] = _Tail(bundle, session, {s.name: s for s in manifest.cut}, output_names)
        self._tails[manifest.model_id] = served
        batching = self.batching
        log.info(
            "serving model %r bundle %s%s from %s (%s)",
            manifest.model_id,
            manifest.bundle_hash[:12],
            f" version {manifest.version}" if manifest.version else "",
            bundle.path,
            f"batches of up to {batching.max_batch} within {batching.window_ms:g} ms"
            if manifest.batchable and batching.max_batch > 1
            else "one request at a time: the tail was not exported batchable"
            if not manifest.batchable
            else "unbatched",
        )

    def publish(self, bundle: Bundle) -> None:
        """Serves `bundle`, another version of a model already served, beside the versions being
        served: requests naming those are still answered (devices roll over one by one), and
        ListModels advertises the highest version as the newest."""
        model_id = bundle.manifest.model_id
        if model_id not in self._tails:
            raise BundleError(
                f"bundle {str(bundle.path)!r} is of model {model_id!r}, which this server does not serve "
                f"({sorted(self._tails)}): a running server takes new versions of its models; restart it for a new model"
            )
        with self._publishing:
            self._load(bundle)
            self.bundles = (*self.bundles, bundle)

    def served_bundle(self, model_id: str, bundle_hash: str) -> Bundle:
        """The served bundle of `model_id` with `bundle_hash`; UnknownModelError (NOT_FOUND) when
        there is none."""
        served = self._model(model_id)
        tail = served.get(bundle_hash)
        if tail is None:
            raise UnknownModelError(
                f"model {model_id!r} has no served bundle with bundle_hash {bundle_hash!r}; it serves {sorted(served)}"
            )
        return tail.bundle

    def _model(self, model_id: str) -> dict[str, _Tail]:
        """The served tails of `model_id` by bundle hash; UnknownModelError when it is not served."""
        served = self._tails.get(model_id)
        if served is None:
            raise UnknownModelError(f"unknown model {model_id!r}; this server serves {sorted(self._tails)}")
        return served

    def _lookup(self, model_id: str, bundle_hash: str) -> _Tail:
        served = self._model(model_id)
        tail = served.get(bundle_hash)
        if tail is None:
            raise BundleMismatchError(
                f"model {model_id!r}: the client's head has bundle_hash {bundle_hash!r}, but this server holds "
                f"tails for {sorted(served)}; export the head and tail together and deploy both"
            )
        return tail


@dataclass(frozen=True)
class _Prepared:
    """A checked request with its tensors decoded, ready for its tail."""

    request_id: str
    tail: _Tail
    feed: dict[str, np.ndarray]
    form: ResultForm
    describe: str
    start: float
    decoded: float


def _newest(served: Mapping[str, _Tail]) -> str:
    """The bundle_hash of the highest version above 0 among `served` ("" when none is versioned)."""
    versioned = [(t.bundle.manifest.version, h) for h, t in served.items() if t.bundle.manifest.version]
    return max(versioned)[1] if versioned else ""


def _respond(
    prepared: _Prepared, values: Sequence[np.ndarray], tail_ms: float, expected_wait_ms: float = 0.0
) -> pb.InferResponse:
    ran = time.perf_counter()
    names = prepared.tail.output_names
    outputs = prepared.form.encode(dict(zip(names, values)))
    done = time.perf_counter()
    return pb.InferResponse(
        request_id=prepared.request_id,
        outputs=outputs,
        timing=pb.ServerTiming(
            decode_ms=(prepared.decoded - prepared.start) * 1e3,
            # The batch's run; the rest of the time between decoding and encoding is the queue's.
            tail_ms=tail_ms,
            queue_ms=max(0.0, (ran - prepared.decoded) * 1e3 - tail_ms),
            encode_ms=(done - ran) * 1e3,
            total_ms=(done - prepared.start) * 1e3,
            expected_wait_ms=expected_wait_ms,
        ),
    )


def _result_form(prefix: str, request: pb.InferRequest, bundle: Bundle) -> ResultForm:
    """The form the request asks for (else the bundle's default), checked against the outputs
    before any work: a top-k beyond an output's scores is refused, not truncated."""
    if not request.HasField("result"):
        return bundle.manifest.result_form
    try:
        form = ResultForm.from_wire(request.result)
        form.check_outputs(bundle.manifest.outputs)
    except CodecError as err:
        raise CodecError(f"{prefix}: {err}") from None
    return form


def _check_deadline(prefix: str, deadline: float | None, stage: str) -> None:
    if deadline is None:
        return
    late_s = time.monotonic() - deadline
    if late_s >= 0:
        raise DeadlineExceededError(
            f"{prefix}: the client's deadline passed {late_s * 1e3:.1f} ms before {stage}; dropped, its tail not run"
        )


def _check_tail(bundle: Bundle, session: ort.InferenceSession) -> tuple[str, ...]:
    """Refuses at start-up a tail.onnx whose inputs and outputs are not the manifest's."""
    manifest = bundle.manifest
    inputs = sorted(i.name for i in session.get_inputs())
    if inputs != sorted(s.name for s in manifest.cut):
        cut = [s.name for s in manifest.cut]
        raise BundleError(f"{bundle.tail_path}: inputs {inputs} are not the manifest's cut {cut}")
    outputs = {o.name for o in session.get_outputs()}
    missing = [s.name for s in manifest.outputs if s.name not in outputs]
    if missing:
        raise BundleError(f"{bundle.tail_path}: lacks the manifest's outputs {missing}; it has {sorted(outputs)}")
    return tuple(s.name for s in manifest.outputs)


def _check_names(prefix: str, got: list[str], expected: list[str]) -> None:
    duplicates = sorted(name for name, n in collections.Counter(got).items() if n > 1)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if duplicates or missing or extra:
        problems = [
            f"{label} {names}"
            for label, names in (("missing", missing), ("unexpected", extra), ("duplicated", duplicates))
            if names
        ]
        raise TensorSpecError(f"{prefix}: the request's tensors do not match the cut {expected}: {'; '.join(problems)}")


def _check_spec(prefix: str, tensor: pb.Tensor, spec: TensorSpec) -> None:
    expected_dtype = wire_dtype(spec.dtype)
    if tensor.dtype != expected_dtype:
        raise TensorSpecError(
            f"{prefix}: tensor {tensor.name!r} has dtype {_dtype_name(tensor.dtype)}, "
            f"the cut needs {_dtype_name(expected_dtype)}"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if not spec.accepts(shape):
        raise TensorSpecError(
            f"{prefix}: tensor {tensor.name!r} has shape {list(shape)}, the cut needs {list(spec.shape)} (-1: any size)"
        )


def _dtype_name(value: int) -> str:
    try:
        return pb.DType.Name(value)
    except ValueError:
        return f"<unknown enum value {value}>"
