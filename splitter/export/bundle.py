"""Export: a ModelSource and a Cut → a Bundle directory (head.onnx, tail.onnx, manifest.json),
verified on real inputs before it is written.

The halves are cut out of the one ONNX model with `onnx.utils.Extractor`. Each bundle is verified
(splitter.export.verify) before anything is written: head∘tail must reproduce the unsplit model
with raw fp32 on the wire, and keep its answers with the bundle's codec; failing raises
ExportError and nothing is written.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

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
    checked_result_form,
    load_bundle,
    load_multi_cut_bundle,
    segments_sha256,
    sha256_file,
    write_manifest,
)
from protos.decisions import DecisionTable
from protos.errors import SplitInferError
from splitter.accuracy.agreement import DEFAULT_MAX_ERROR, Agreement
from splitter.export.batch_axis import batchable_tail
from splitter.export.optimize import quantize_head, to_ort_format
from splitter.export.verify import Acceptance, ExportError, RunHead, Samples, Verification, accept, verify, verify_split
from splitter.graph.cuts import Cut
from splitter.graph.graph import Graph
from splitter.metrics import Metric
from splitter.profile.timing import median_ms, session
from splitter.sources import ModelSource

# An all-on-device cut sends nothing; its check compares the head's own outputs, any codec will do.
_EDGE_ONLY_VERIFY_CODEC = "fp32"


HEAD_FORMATS = ("onnx", "ort")


def check_head_format(head_format: str) -> None:
    if head_format not in HEAD_FORMATS:
        raise SplitInferError(f"head format {head_format!r} is not 'onnx' or 'ort'")


def split_model(model: onnx.ModelProto, cut: Cut) -> tuple[onnx.ModelProto | None, onnx.ModelProto | None]:
    """(head, tail); the head is None when the input crosses, the tail None when the output does."""
    extractor = onnx.utils.Extractor(model)
    inputs = [v.name for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    outputs = [v.name for v in model.graph.output]
    head = None if cut.is_cloud_only else extractor.extract_model(inputs, list(cut.tensors))
    tail = None if cut.is_edge_only else extractor.extract_model(list(cut.tensors), outputs)
    return head, tail


def _specs(graph: Graph, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, graph.tensors[n].dtype, graph.tensors[n].shape, graph.clamps.get(n)) for n in names)


def _manifest(source: ModelSource, cut: Cut, **fields) -> Manifest:
    """The manifest of `cut`: what the source and its Graph say, and the bundle's own `fields`."""
    graph = source.graph
    return Manifest(
        model_id=source.model_id,
        cut_name=cut.name,
        inputs=_specs(graph, graph.inputs),
        cut=_specs(graph, cut.tensors),
        outputs=_specs(graph, graph.outputs),
        preprocess=source.preprocess,
        labels=source.labels,
        **fields,
    )


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A directory beside `out_dir`, renamed into its place (replacing what is there) when the body
    succeeds and removed when it fails, so a failed export leaves no half bundle."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _quantized(
    source, cut, head, tail, samples, wire, calibration, min_agreement, max_error
) -> tuple[onnx.ModelProto, dict]:
    """The int8 head, after it has passed the same agreement check as the fp32 one: its top-1 share
    at least `min_agreement`, or, with a budget `max_error`, the share's lower bound at least
    1 − max_error (the int8 head changes answers the codec's agreement never saw)."""
    quantized = quantize_head(head, calibration)
    check = verify_split(source.model, quantized, tail, samples, wire, source.graph.clamps)
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
    return quantized, _quantized_report(head, quantized, samples, calibration, check, agreement)


def _quantized_report(head, quantized, samples, calibration, check: Verification, agreement: Agreement) -> dict:
    """What the manifest records of the int8 head: its latency and size before and after, its agreement."""
    feed = samples[0][1]
    before, after = session(head, threads=1), session(quantized, threads=1)
    return {
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
    samples: Samples,
    *,
    codec: str = "int8+zstd",
    fp32_tolerance: float = 1e-4,
    min_agreement: float = 1.0,
    quantize_with: Sequence[dict[str, np.ndarray]] = (),
    head_format: str = "onnx",
    metric: Metric | None = None,
    max_error: float | None = None,
    samples_record: dict | None = None,
    result: str = "",
    version: int = 0,
) -> tuple[Bundle, Verification]:
    """Writes the bundle for `cut` into out_dir (replacing what is there) after verifying it.

    With a task `metric`, the codec must meet the accuracy budget `max_error` by the agreement
    measured on `samples` exactly as the profile measures it (the plan's min_agreement rule), so a (cut,
    codec) a plan admitted on the same samples passes; without one, the top-1 class must agree on
    `min_agreement` of the samples. `samples_record` (splitter.accuracy.samples) goes into the manifest.
    `quantize_with`: calibration inputs; when given, the head is quantised to int8 with them.
    `head_format`: "onnx" or "ort". `result`: the outputs' default form (protos.result_form), checked
    against the model's outputs before any work. `version`: the manifest's version (0: unversioned),
    which a device updating over the air compares (edge_runtime.updates)."""
    check_head_format(head_format)
    if not samples:
        raise SplitInferError("export needs at least one sample input to verify the split")
    wire = wire_codec.Codec.parse(codec)
    checked_result_form(result, _specs(source.graph, source.graph.outputs))
    head, tail = split_model(source.model, cut)
    tail, batchable = batchable_tail(tail)
    check = verify_split(source.model, head, tail, samples, wire, source.graph.clamps)
    check = accept(source, cut, check, samples, Acceptance(fp32_tolerance, min_agreement, metric, max_error))
    head_report = {}
    if quantize_with and head is not None:
        budget = None if metric is None else (DEFAULT_MAX_ERROR if max_error is None else max_error)
        head, head_report = _quantized(source, cut, head, tail, samples, wire, quantize_with, min_agreement, budget)

    out_dir = Path(out_dir)
    with _staging(out_dir) as staging:
        head_file = "head.ort" if head_format == "ort" else HEAD_FILE
        hashes = {name: _write_part(staging, name, part) for name, part in ((head_file, head), (TAIL_FILE, tail))}
        verification = {
            **asdict(check),
            **({"quantized_head": head_report} if head_report else {}),
            **({"sample_sets": samples_record} if samples_record else {}),
        }
        manifest = _manifest(
            source,
            cut,
            codec=wire.name,
            head_sha256=hashes[head_file],
            head_file=head_file,
            tail_sha256=hashes[TAIL_FILE],
            batchable=batchable,
            verification=verification,
            result=result,
            version=version,
        )
        write_manifest(staging, manifest)
    return load_bundle(out_dir), check


def _write_part(staging: Path, name: str, part: onnx.ModelProto | None) -> str:
    """Writes one half as `name` (`.ort`: converted) and returns its sha256; "" for a missing half."""
    if part is None:
        return ""
    data = to_ort_format(part) if name.endswith(".ort") else part.SerializeToString()
    (staging / name).write_bytes(data)
    return sha256_file(staging / name)


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


def _codecs_per_cut(decisions: DecisionTable, cuts: Sequence[Cut]) -> dict[str, list[str]]:
    """Per cut, the codecs its decisions list, in their order; the table and `cuts` must name the same cuts."""
    codecs_of: dict[str, list[str]] = {}
    for choice in decisions.choices:
        codecs_of.setdefault(choice.cut, []).append(choice.codec)
    missing = [c.name for c in cuts if c.name not in codecs_of]
    if missing:
        raise SplitInferError(f"the decision table has no entry for cuts {missing}")
    extra = sorted(set(codecs_of) - {c.name for c in cuts})
    if extra:
        raise SplitInferError(f"the decision table names cuts {extra} that the bundle does not carry")
    return codecs_of


def export_multi_cut(
    source: ModelSource,
    cuts: Sequence[Cut],
    out_dir: str | Path,
    samples: Samples,
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
    codecs_of = _codecs_per_cut(decisions, cuts)
    segments = _segment_files(source.model, cuts)
    sessions = [(segment, session(part, threads=1)) for segment, part in segments]
    rule = Acceptance(fp32_tolerance, min_agreement, metric, max_error)
    out_dir = Path(out_dir)
    with _staging(out_dir) as staging:
        written = _write_segments(staging, segments)
        manifests, counts, checks = [], [], {}
        for index, cut in enumerate(cuts):
            # The segments this cut's head runs: one per cut up to it that has a head.
            count = sum(1 for c in cuts[: index + 1] if not c.is_cloud_only)
            _, tail = split_model(source.model, cut)
            tail, batchable = batchable_tail(tail)
            head = _segmented_head(sessions[:count], cut)
            checks[cut.name] = _verify_codecs(source, cut, head, tail, samples, codecs_of[cut.name], rule)
            tail_file, tail_sha = _write_tail(staging, index, tail)
            verification = {
                **{codec: asdict(c) for codec, c in checks[cut.name].items()},
                **({"sample_sets": samples_record} if samples_record else {}),
            }
            manifests.append(
                _manifest(
                    source,
                    cut,
                    codec=next(iter(checks[cut.name].values())).codec,
                    head_sha256=segments_sha256(tuple(written[:count])),
                    head_file=SEGMENTED_HEAD,
                    tail_sha256=tail_sha,
                    tail_file=tail_file or TAIL_FILE,
                    batchable=batchable,
                    verification=verification,
                )
            )
            counts.append(count)
        manifest = MultiCutManifest(
            source.model_id, tuple(written), tuple(manifests), tuple(counts), decisions.to_dict()
        )
        write_manifest(staging, manifest)
    return load_multi_cut_bundle(out_dir), checks


def _write_segments(staging: Path, segments: list[tuple[HeadSegment, onnx.ModelProto]]) -> list[HeadSegment]:
    """Writes every head segment; the segments as the manifest records them, with their hashes."""
    written = []
    for segment, part in segments:
        (staging / segment.file).write_bytes(part.SerializeToString())
        written.append(HeadSegment(segment.file, sha256_file(staging / segment.file), segment.inputs, segment.outputs))
    return written


def _segmented_head(sessions: list[tuple[HeadSegment, ort.InferenceSession]], cut: Cut) -> RunHead:
    """A feed → `cut`'s tensors, through `sessions` in order, each reading what the ones before made."""

    def run_head(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(feed)
        for segment, part in sessions:
            outputs = part.run(list(segment.outputs), {n: values[n] for n in segment.inputs})
            values.update(zip(segment.outputs, outputs, strict=True))
        return {name: values[name] for name in cut.tensors}

    return run_head


def _verify_codecs(
    source: ModelSource,
    cut: Cut,
    run_head: RunHead,
    tail: onnx.ModelProto | None,
    samples: Samples,
    codecs: list[str],
    rule: Acceptance,
) -> dict[str, Verification]:
    """Per codec of `cut`'s decisions (by its parsed name), the verification that met `rule`."""
    checks = {}
    for codec in codecs:
        wire = wire_codec.Codec.parse(_EDGE_ONLY_VERIFY_CODEC if codec == "-" else codec)
        check = verify(source.model, run_head, tail, samples, wire, source.graph.clamps)
        checks[wire.name] = accept(source, cut, check, samples, rule)
    return checks


def _write_tail(staging: Path, index: int, tail: onnx.ModelProto | None) -> tuple[str, str]:
    """(file, sha256) of cut `index`'s tail; ("", "") when the cut has none (all on the device)."""
    if tail is None:
        return "", ""
    tail_file = f"tail-{index:02d}.onnx"
    (staging / tail_file).write_bytes(tail.SerializeToString())
    return tail_file, sha256_file(staging / tail_file)
