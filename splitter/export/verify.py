"""Verification of head∘tail against the unsplit model, on real inputs, before a bundle is written.

Each sample runs through the unsplit model and through head → codec → tail, twice: with raw fp32
on the wire, where the two must agree to `fp32_tolerance` (they compute the same ops, so they agree
exactly in practice), and with the bundle's codec, where the top-1 class must agree on at least
`min_agreement` of the samples, or, with a task metric, the codec's measured agreement must meet
the accuracy budget by the plan's rule. Failing raises ExportError, and the caller writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from protos import codec as wire_codec
from protos.codec import Clamp
from protos.errors import SplitInferError
from splitter.accuracy.agreement import min_agreement, samples_needed
from splitter.graph.cuts import Cut
from splitter.metrics import Metric
from splitter.profile.timing import session
from splitter.sources import ModelSource

Samples = Sequence[tuple[str, dict[str, np.ndarray]]]
RunHead = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


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


@dataclass(frozen=True)
class Acceptance:
    """What a split must meet: without a `metric`, fp32 within `fp32_tolerance` and the top-1 class
    kept on `min_agreement` of the samples; with one, the fp32 check and the budget `max_error`."""

    fp32_tolerance: float
    min_agreement: float
    metric: Metric | None = None
    max_error: float | None = None


def verify_split(
    model: onnx.ModelProto,
    head: onnx.ModelProto | None,
    tail: onnx.ModelProto | None,
    samples: Samples,
    codec: wire_codec.Codec,
    clamps: Mapping[str, Clamp] | None = None,
) -> Verification:
    head_session = session(head, threads=1) if head is not None else None

    def run_head(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if head_session is None:
            return feed
        names = [o.name for o in head_session.get_outputs()]
        return dict(zip(names, head_session.run(None, feed), strict=True))

    return verify(model, run_head, tail, samples, codec, clamps)


def verify(
    model: onnx.ModelProto,
    run_head: RunHead,
    tail: onnx.ModelProto | None,
    samples: Samples,
    codec: wire_codec.Codec,
    clamps: Mapping[str, Clamp] | None = None,
) -> Verification:
    """`run_head` (a feed → the cut's tensors) then `tail`, against `model`, with fp32 and with
    `codec`, each cut tensor clamped to its range in `clamps` first, as the device does."""
    full = session(model, threads=1)
    tail_session = session(tail, threads=1) if tail is not None else None
    fp32 = wire_codec.Codec("fp32")

    def split_run(feed: dict[str, np.ndarray], wire: wire_codec.Codec) -> np.ndarray:
        feed = run_head(feed)
        if tail_session is None:
            return next(iter(feed.values()))
        return tail_session.run(None, _through_wire(feed, wire, clamps or {}))[0]

    diff_fp32 = diff_codec = 0.0
    agree = 0
    for _, feed in samples:
        expected = full.run(None, feed)[0]
        diff_fp32 = max(diff_fp32, float(np.max(np.abs(split_run(feed, fp32) - expected))))
        got = split_run(feed, codec)
        diff_codec = max(diff_codec, float(np.max(np.abs(got - expected))))
        agree += int(np.array_equal(_top1(got), _top1(expected)))
    return Verification(tuple(n for n, _ in samples), diff_fp32, codec.name, diff_codec, agree / len(samples))


def _top1(output: np.ndarray) -> np.ndarray:
    return output.reshape(output.shape[0], -1).argmax(-1)


def _through_wire(
    arrays: dict[str, np.ndarray], codec: wire_codec.Codec, clamps: Mapping[str, Clamp]
) -> dict[str, np.ndarray]:
    return {
        name: wire_codec.decode(wire_codec.encode(name, array, codec, clamps.get(name)))
        for name, array in arrays.items()
    }


def accept(source: ModelSource, cut: Cut, check: Verification, samples: Samples, rule: Acceptance) -> Verification:
    """`check` if it meets `rule` (with a metric, gaining the measured agreement); else ExportError."""
    if rule.metric is None:
        _require(cut, check, rule.fp32_tolerance, rule.min_agreement, len(samples))
        return check
    return _require_agreement(source, cut, check, samples, rule.metric, rule.max_error, rule.fp32_tolerance)


def _require_agreement(
    source: ModelSource,
    cut: Cut,
    check: Verification,
    samples: Samples,
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
    feeds = [feed for _, feed in samples]
    measured = measure_agreement(source.model, [cut], feeds, [check.codec], metric, clamps=source.graph.clamps)
    agreement = measured[cut.name][check.codec]
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
    """fp32 within `fp32_tolerance`, and the top-1 class kept on `min_agreement` of `count` samples."""
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
