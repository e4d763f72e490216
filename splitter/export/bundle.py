"""Export: a ModelSource and a Cut → a Bundle directory (head.onnx, tail.onnx, manifest.json),
verified on real inputs before it is written.

The halves are cut out of the one ONNX model with `onnx.utils.Extractor`. Verification runs the
unsplit model and head → codec → tail on each sample, twice: with raw fp32 on the wire, where the
two must agree to `fp32_tolerance` (they compute the same ops, so they agree exactly in practice),
and with the bundle's codec, where the top-1 class must agree on at least `min_agreement` of the
samples. Either failing raises ExportError and nothing is written.

`export_multi_cut` writes one bundle that carries several cuts of the model (protos.bundle): the
head in segments, each computing the next cut's tensors from the previous cut's, so a weight is
stored once on the device however many cuts it carries (onnxruntime runs every node of a model
whatever outputs are asked for, so one multi-exit head would cost the deepest cut's time at every
cut), and a tail per cut. Every cut is verified through the segments it runs, with every codec of
its decision table.

Options for the device: the head quantised to int8 (static, calibrated on inputs the caller gives),
checked like any head (its top-1 agreement must pass too, and its latency before and after is
recorded), and the head written in ONNX Runtime's mobile `.ort` format.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from protos import codec as wire_codec
from protos.bundle import (
    HEAD_FILE,
    SEGMENTED_HEAD,
    TAIL_FILE,
    Bundle,
    HeadSegment,
    Manifest,
    MultiCutBundle,
    MultiCutManifest,
    TensorSpec,
    load_bundle,
    load_multi_cut_bundle,
    segments_sha256,
    sha256_file,
    write_manifest,
)
from protos.decisions import DecisionTable
from protos.errors import SplitInferError
from splitter.accuracy.agreement import DEFAULT_MAX_ERROR, Agreement, min_agreement, samples_needed
from splitter.export.batch_axis import batchable_tail
from splitter.graph.cuts import Cut
from splitter.graph.graph import Graph
from splitter.metrics import Metric
from splitter.export.optimize import quantize_head, to_ort_format
from splitter.profile.timing import median_ms, session
from splitter.sources import ModelSource


class ExportError(SplitInferError):
    """head∘tail does not reproduce the unsplit model within tolerance."""


@dataclass(frozen=True)
class Verification:
    samples: tuple[str, ...]
    max_abs_diff_fp32: float
    codec: str
    max_abs_diff_codec: float
    top1_agreement_codec: float
    # With a task metric (splitter.accuracy.evaluate): its name, and how many samples it passed with the
    # codec, as the profile measures it.
    metric: str = ""
    agreement: dict | None = None


def split_model(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto | None, onnx.ModelProto | None]:
    """(head, tail); the head is None when the input crosses, the tail None when the output does."""
    extractor = onnx.utils.Extractor(model)
    inputs = [v.name for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    outputs = [v.name for v in model.graph.output]
    head = None if cut.is_cloud_only else extractor.extract_model(inputs, list(cut.tensors))
    tail = None if cut.is_edge_only else extractor.extract_model(list(cut.tensors), outputs)
    return head, tail


def _through_wire(arrays: dict[str, np.ndarray], codec: wire_codec.Codec) -> dict[str, np.ndarray]:
    return {name: wire_codec.decode(wire_codec.encode(name, array, codec)) for name, array in arrays.items()}


def verify_split(
    model: onnx.ModelProto,
    head: onnx.ModelProto | None,
    tail: onnx.ModelProto | None,
    samples: Sequence[tuple[str, dict[str, np.ndarray]]],
    codec: wire_codec.Codec,
) -> Verification:
    head_session = session(head, threads=1) if head is not None else None

    def run_head(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if head_session is None:
            return feed
        names = [o.name for o in head_session.get_outputs()]
        return dict(zip(names, head_session.run(None, feed)))

    return _verify(model, run_head, tail, samples, codec)


def _verify(
    model: onnx.ModelProto,
    run_head: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    tail: onnx.ModelProto | None,
    samples: Sequence[tuple[str, dict[str, np.ndarray]]],
    codec: wire_codec.Codec,
) -> Verification:
    full = session(model, threads=1)
    tail_session = session(tail, threads=1) if tail is not None else None
    fp32 = wire_codec.Codec("fp32")

    def split_run(feed: dict[str, np.ndarray], wire: wire_codec.Codec) -> np.ndarray:
        feed = run_head(feed)
        if tail_session is None:
            return next(iter(feed.values()))
        return tail_session.run(None, _through_wire(feed, wire))[0]

    diff_fp32 = diff_codec = 0.0
    agree = 0
    for _, feed in samples:
        expected = full.run(None, feed)[0]
        diff_fp32 = max(diff_fp32, float(np.max(np.abs(split_run(feed, fp32) - expected))))
        got = split_run(feed, codec)
        diff_codec = max(diff_codec, float(np.max(np.abs(got - expected))))
        agree += int(np.array_equal(got.reshape(got.shape[0], -1).argmax(-1), expected.reshape(expected.shape[0], -1).argmax(-1)))
    return Verification(tuple(n for n, _ in samples), diff_fp32, codec.name, diff_codec, agree / len(samples))


def _specs(graph: Graph, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, graph.tensors[n].dtype, graph.tensors[n].shape) for n in names)


def _quantized(source, cut, head, tail, samples, wire, calibration, min_agreement, max_error) -> tuple[onnx.ModelProto, dict]:
    """The int8 head, after it has passed the same agreement check as the fp32 one: its top-1 share
    at least `min_agreement`, or, with a budget `max_error`, the share's lower bound at least
    1 − max_error (the int8 head changes answers the codec's agreement never saw)."""
    quantized = quantize_head(head, calibration)
    check = verify_split(source.model, quantized, tail, samples, wire)
    agreement = Agreement(round(check.top1_agreement_codec * len(samples)), len(samples))
    if max_error is not None and not agreement.meets(max_error):
        raise ExportError(
            f"cut {cut.name!r}: with the int8 head the top-1 class agrees with the unsplit model on {agreement}; "
            f"the budget --max-error {max_error:.1%} needs a lower bound of at least {1 - max_error:.1%}"
        )
    if max_error is None and check.top1_agreement_codec < min_agreement:
        raise ExportError(
            f"cut {cut.name!r}: with the int8 head the top-1 class agrees with the unsplit model on "
            f"{check.top1_agreement_codec:.0%} of {len(samples)} samples (required {min_agreement:.0%})"
        )
    feed = samples[0][1]
    before, after = session(head, threads=1), session(quantized, threads=1)
    return quantized, {
        "calibration_inputs": len(calibration),
        "head_ms_fp32": median_ms(lambda: before.run(None, feed), 10, 2, 2.0),
        "head_ms_int8": median_ms(lambda: after.run(None, feed), 10, 2, 2.0),
        "head_bytes_fp32": head.ByteSize(),
        "head_bytes_int8": quantized.ByteSize(),
        "top1_agreement": check.top1_agreement_codec,
        "top1_agreed": agreement.passed,
        "samples": len(samples),
        "max_abs_diff": check.max_abs_diff_codec,
    }


def export_bundle(
    source: ModelSource,
    cut: Cut,
    out_dir: str | Path,
    samples: Sequence[tuple[str, dict[str, np.ndarray]]],
    *,
    codec: str = "int8+zstd",
    fp32_tolerance: float = 1e-4,
    min_agreement: float = 1.0,
    quantize_with: Sequence[dict[str, np.ndarray]] = (),
    head_format: str = "onnx",
    metric: Metric | None = None,
    max_error: float | None = None,
    samples_record: dict | None = None,
) -> tuple[Bundle, Verification]:
    """Writes the bundle for `cut` into out_dir (replacing what is there) after verifying it.

    With a task `metric`, the codec must meet the accuracy budget `max_error` by the agreement
    measured on `samples` exactly as the profile measures it (the plan's min_agreement rule), so a (cut,
    codec) a plan admitted on the same samples passes; without one, the top-1 class must agree on
    `min_agreement` of the samples. `samples_record` (splitter.accuracy.samples) goes into the manifest.
    `quantize_with`: calibration inputs; when given, the head is quantised to int8 with them.
    `head_format`: "onnx" or "ort"."""
    if head_format not in ("onnx", "ort"):
        raise SplitInferError(f"head format {head_format!r} is not 'onnx' or 'ort'")
    if not samples:
        raise SplitInferError("export needs at least one sample input to verify the split")
    wire = wire_codec.Codec.parse(codec)
    head, tail = split_model(source.model, cut)
    tail, batchable = batchable_tail(tail)
    check = verify_split(source.model, head, tail, samples, wire)
    if metric is None:
        _require(cut, check, fp32_tolerance, min_agreement, len(samples))
    else:
        check = _require_agreement(source, cut, check, samples, metric, max_error, fp32_tolerance)
    head_report = {}
    if quantize_with and head is not None:
        budget = None if metric is None else (DEFAULT_MAX_ERROR if max_error is None else max_error)
        head, head_report = _quantized(source, cut, head, tail, samples, wire, quantize_with, min_agreement, budget)

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place, so a failed export leaves no half bundle.
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    try:
        head_file = "head.ort" if head_format == "ort" else HEAD_FILE
        hashes = {}
        for name, part in ((head_file, head), (TAIL_FILE, tail)):
            if part is None:
                hashes[name] = ""
                continue
            data = to_ort_format(part) if name.endswith(".ort") else part.SerializeToString()
            (staging / name).write_bytes(data)
            hashes[name] = sha256_file(staging / name)
        graph = source.graph
        manifest = Manifest(
            model_id=source.model_id,
            cut_name=cut.name,
            inputs=_specs(graph, graph.inputs),
            cut=_specs(graph, cut.tensors),
            outputs=_specs(graph, graph.outputs),
            codec=wire.name,
            head_sha256=hashes[head_file],
            head_file=head_file,
            tail_sha256=hashes[TAIL_FILE],
            preprocess=source.preprocess,
            batchable=batchable,
            verification={
                **asdict(check),
                **({"quantized_head": head_report} if head_report else {}),
                **({"sample_sets": samples_record} if samples_record else {}),
            },
            labels=source.labels,
        )
        write_manifest(staging, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(out_dir), check


def _segment_files(model: onnx.ModelProto, cuts: Sequence[Cut]) -> list[tuple[HeadSegment, onnx.ModelProto]]:
    """The head of the deepest cut, in one segment per cut with a head: segment k computes cut k's
    tensors (those not already among cut k-1's) from cut k-1's, or from the model inputs."""
    extractor = onnx.utils.Extractor(model)
    available = [v.name for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    segments = []
    for index, cut in enumerate(c for c in cuts if not c.is_cloud_only):
        outputs = [t for t in cut.tensors if t not in available]
        part = extractor.extract_model(available, outputs)
        initializers = {i.name for i in part.graph.initializer}
        inputs = tuple(v.name for v in part.graph.input if v.name not in initializers)
        segments.append((HeadSegment(f"head-{index:02d}.onnx", "", inputs, tuple(outputs)), part))
        available = list(cut.tensors)
    return segments


def _nested(cuts: Sequence[Cut]) -> list[Cut]:
    """`cuts` deepest-last; each device part must contain the one before (prefix cuts do)."""
    odd = [c.name for c in cuts if not c.is_prefix]
    if odd:
        raise SplitInferError(f"a multi-cut bundle carries prefix cuts only (their heads nest); {odd} are not")
    return sorted(cuts, key=lambda c: c.head_size)


def export_multi_cut(
    source: ModelSource,
    cuts: Sequence[Cut],
    out_dir: str | Path,
    samples: Sequence[tuple[str, dict[str, np.ndarray]]],
    decisions: DecisionTable,
    *,
    fp32_tolerance: float = 1e-4,
    min_agreement: float = 1.0,
    metric: Metric | None = None,
    max_error: float | None = None,
    samples_record: dict | None = None,
) -> tuple[MultiCutBundle, dict[str, dict[str, Verification]]]:
    """Writes one bundle carrying `cuts` (prefix cuts; their heads as shared segments) and the
    edge's `decisions` (protos.decisions). Each cut is verified like a single
    export with every codec its decisions list (its manifest's codec is the first of them).
    Returns the bundle and, per cut and codec, the verification."""
    if not samples:
        raise SplitInferError("export needs at least one sample input to verify the split")
    if not cuts:
        raise SplitInferError("a multi-cut bundle needs at least one cut")
    cuts = _nested(cuts)
    codecs_of: dict[str, list[str]] = {}
    for choice in decisions.choices:
        codecs_of.setdefault(choice.cut, []).append(choice.codec)
    missing = [c.name for c in cuts if c.name not in codecs_of]
    if missing:
        raise SplitInferError(f"the decision table has no entry for cuts {missing}")
    extra = sorted(set(codecs_of) - {c.name for c in cuts})
    if extra:
        raise SplitInferError(f"the decision table names cuts {extra} that the bundle does not carry")
    segments = _segment_files(source.model, cuts)
    sessions = [(segment, session(part, threads=1)) for segment, part in segments]
    graph = source.graph
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    try:
        written = []
        for segment, part in segments:
            (staging / segment.file).write_bytes(part.SerializeToString())
            written.append(HeadSegment(segment.file, sha256_file(staging / segment.file), segment.inputs, segment.outputs))
        manifests, counts, checks = [], [], {}
        for index, cut in enumerate(cuts):
            count = sum(1 for c in cuts[: index + 1] if not c.is_cloud_only)

            def run_head(feed: dict[str, np.ndarray], count: int = count) -> dict[str, np.ndarray]:
                values = dict(feed)
                for segment, part in sessions[:count]:
                    values.update(zip(segment.outputs, part.run(list(segment.outputs), {n: values[n] for n in segment.inputs})))
                return values

            def head_outputs(feed: dict[str, np.ndarray], cut: Cut = cut, run_head=run_head) -> dict[str, np.ndarray]:
                values = run_head(feed)
                return {name: values[name] for name in cut.tensors}

            _, tail = split_model(source.model, cut)
            tail, batchable = batchable_tail(tail)
            checks[cut.name] = {}
            for codec in codecs_of[cut.name]:
                wire = wire_codec.Codec.parse(_EDGE_ONLY_VERIFY_CODEC if codec == "-" else codec)
                check = _verify(source.model, head_outputs, tail, samples, wire)
                if metric is None:
                    _require(cut, check, fp32_tolerance, min_agreement, len(samples))
                else:
                    check = _require_agreement(source, cut, check, samples, metric, max_error, fp32_tolerance)
                checks[cut.name][wire.name] = check
            tail_file, tail_sha = "", ""
            if tail is not None:
                tail_file = f"tail-{index:02d}.onnx"
                (staging / tail_file).write_bytes(tail.SerializeToString())
                tail_sha = sha256_file(staging / tail_file)
            first = next(iter(checks[cut.name].values()))
            manifests.append(Manifest(
                model_id=source.model_id, cut_name=cut.name, inputs=_specs(graph, graph.inputs), cut=_specs(graph, cut.tensors),
                outputs=_specs(graph, graph.outputs), codec=first.codec, head_sha256=segments_sha256(tuple(written[:count])),
                head_file=SEGMENTED_HEAD, tail_sha256=tail_sha, tail_file=tail_file or TAIL_FILE, preprocess=source.preprocess,
                batchable=batchable,
                verification={
                    **{codec: asdict(c) for codec, c in checks[cut.name].items()},
                    **({"sample_sets": samples_record} if samples_record else {}),
                },
                labels=source.labels,
            ))  # fmt: skip
            counts.append(count)
        manifest = MultiCutManifest(source.model_id, tuple(written), tuple(manifests), tuple(counts), decisions.to_dict())
        write_manifest(staging, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_multi_cut_bundle(out_dir), checks


# An all-on-device cut sends nothing; its check compares the head's own outputs, any codec will do.
_EDGE_ONLY_VERIFY_CODEC = "fp32"


def _require_agreement(
    source: ModelSource,
    cut: Cut,
    check: Verification,
    samples: Sequence[tuple[str, dict[str, np.ndarray]]],
    metric: Metric,
    max_error: float | None,
    fp32_tolerance: float,
) -> Verification:
    """The fp32 check, then the codec's task agreement measured as the profile measures it and
    admitted by the plan's rule; the Verification gains the agreement."""
    from splitter.accuracy.evaluate import measure_agreement

    _require(cut, check, fp32_tolerance, 0.0, len(samples))
    if cut.is_edge_only:
        return replace(check, metric=metric.name)
    agreement = measure_agreement(source.model, [cut], [feed for _, feed in samples], [check.codec], metric)[cut.name][check.codec]
    if wire_codec.Codec.parse(check.codec).lossy and not agreement.meets(max_error):
        required = min_agreement(max_error)
        needed = samples_needed(required)
        raise ExportError(
            f"cut {cut.name!r}: with codec {check.codec} the {metric.name} metric passed on {agreement}; "
            f"the budget --max-error {1 - required:.1%} needs a lower bound of at least {required:.1%}"
            + (f" (even all passing, that takes at least {needed} samples)" if needed > agreement.count else "")
            + "; choose a less lossy codec (fp16+zstd, fp32+zstd) or a larger budget"
        )
    return replace(check, metric=metric.name, agreement={**agreement.to_dict(), "lower": agreement.lower})


def _require(cut: Cut, check: Verification, fp32_tolerance: float, min_agreement: float, count: int) -> None:
    if not check.max_abs_diff_fp32 <= fp32_tolerance:
        raise ExportError(
            f"cut {cut.name!r}: head∘tail differs from the unsplit model by {check.max_abs_diff_fp32:.3g} "
            f"(tolerance {fp32_tolerance:g}) with raw fp32 on the wire"
        )
    if check.top1_agreement_codec < min_agreement:
        raise ExportError(
            f"cut {cut.name!r}: with codec {check.codec} the top-1 class agrees with the unsplit model on "
            f"{check.top1_agreement_codec:.0%} of {count} samples (required {min_agreement:.0%}); "
            "choose a less lossy codec (fp16+zstd, fp32+zstd)"
        )
