"""Measuring task agreement: every (cut, codec) of a model run on the evaluation samples, head →
codec → tail, and its outputs scored by the task metric against the unsplit model's.

Export verifies a bundle by calling this same function on its one cut, so the two compute the same
numbers: the same head and tail cut out of the same model, the same thread count, the same
batches. A near-tie sample (two classes 0.002 apart in logit) would otherwise flip between two
numerically different paths, and export could refuse what the plan chose.

Measuring must reuse work, or it would cost far more than the timing it sits beside:
- each head runs once per sample, and its activation serves every codec;
- each activation is encoded and decoded once per lossy encoding: a compression (zstd) is
  lossless, so `int8` and `int8+zstd` hand the tail the same values and share one measurement,
  and a lossless encoding (fp32) hands it the activation itself, so it agrees by construction
  (export checks head∘tail against the unsplit model to 1e-4 on every sample);
- each sample runs its head and then its tails in one task, and the next cut's sessions are
  built while the tasks run: no core waits at a cut's end for the last sample or the next
  sessions (building them took ~4 s of MobileNetV2's measurement, while the pool waited);
- samples run side by side on every core. Not in batches: onnxruntime's CPU
  kernels took 9.0 ms a sample for MobileNetV2 at batch 1 and 10.0 at batch 16 on this machine.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from protos import codec as wire_codec
from protos.codec import Clamp
from protos.errors import SplitInferError
from splitter.accuracy.agreement import Agreement, encodings
from splitter.accuracy.samples import Samples, default_samples, load_samples
from splitter.graph.cuts import Cut
from splitter.metrics import Metric
from splitter.profile.timing import session

Feed = dict[str, np.ndarray]
# How many cuts' sample runs may be queued at once while the next cut's sessions are built.
LOOKAHEAD = 2


@dataclass(frozen=True)
class Evaluation:
    """What a split model's accuracy is measured with: the samples and the task metric."""

    samples: Samples
    metric: Metric

    def named(self) -> list[tuple[str, Feed]]:
        """The evaluation samples with their names."""
        return list(zip(self.samples.evaluation.names, self.samples.evaluation.feeds))


def evaluation_for(source, samples_path: Path | None = None, metric: str | None = None) -> Evaluation | None:
    """The user's samples (else the model's default ones) and metric (else the model's own); None
    when neither the user nor the model names a metric: nothing to measure agreement by."""
    from splitter.metrics import create_metric

    spec = metric or source.metric
    if spec is None:
        if samples_path is not None:
            raise SplitInferError(
                f"--samples {str(samples_path)!r} needs a task metric: model {source.model_id!r} declares none; pass --metric"
            )
        return None
    chosen = create_metric(spec)
    if samples_path is not None:
        return Evaluation(load_samples(samples_path, source), chosen)
    # Photos fit a model that declares its own task (a registered classifier); for any other
    # model they would be a guess at its inputs, so it gets random tensors, marked as such.
    return Evaluation(default_samples(source, photos=source.metric is not None), chosen)


def measure_agreement(
    model: onnx.ModelProto,
    cuts: Sequence[Cut],
    samples: Sequence[Feed],
    codecs: Iterable[str],
    metric: Metric,
    *,
    workers: int | None = None,
    progress: Callable[[Iterable[Cut]], Iterable[Cut]] = iter,
    clamps: Mapping[str, Clamp] | None = None,
) -> dict[str, dict[str, Agreement]]:
    """cut name → codec → Agreement, for every cut that sends something. The all-on-device cut
    sends nothing and agrees by construction; it is left out. Each tensor is clamped to its range
    in `clamps` before encoding, as the device clamps it (the graph's `clamps`).

    Every session runs with one onnxruntime thread, and `workers` (default: every core) run
    samples and encodings side by side: the numbers never depend on how many ran at once."""
    if not samples:
        raise SplitInferError("measuring agreement needs at least one evaluation sample")
    shared = encodings(codecs)
    lossy = sorted({e for e in shared.values() if e is not None})
    extractor = onnx.utils.Extractor(model)
    inputs = list(samples[0])
    outputs = [v.name for v in model.graph.output]
    result: dict[str, dict[str, Agreement]] = {}
    pending: deque[tuple[Cut, list[Future[dict[str, bool]]]]] = deque()

    def collect() -> None:
        cut, futures = pending.popleft()
        passed: dict[str | None, int] = {None: len(samples), **dict.fromkeys(lossy, 0)}
        for future in futures:
            for encoding, verdict in future.result().items():
                passed[encoding] += verdict
        result[cut.name] = {name: Agreement(passed[encoding], len(samples)) for name, encoding in shared.items()}

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        full = session(model, threads=1)
        references = list(pool.map(lambda feed: full.run(None, feed), samples))
        for cut in progress(cuts):
            if cut.is_edge_only:
                continue
            head = (
                None if cut.head_size == 0 else session(extractor.extract_model(inputs, list(cut.tensors)), threads=1)
            )
            tail = session(extractor.extract_model(list(cut.tensors), outputs), threads=1)
            job = functools.partial(_verdicts, head, tail, cut.tensors, lossy, metric, clamps or {})
            pending.append((cut, [pool.submit(job, feed, reference) for feed, reference in zip(samples, references)]))
            # The next cut's sessions are built while this one's samples run, so no core waits
            # for them; at most LOOKAHEAD cuts' runs are queued (their sessions held).
            while len(pending) > LOOKAHEAD:
                collect()
        while pending:
            collect()
    return result


def _verdicts(
    head,
    tail,
    tensors: tuple[str, ...],
    lossy: Sequence[str],
    metric: Metric,
    clamps: Mapping[str, Clamp],
    feed: Feed,
    reference: list[np.ndarray],
) -> dict[str, bool]:
    """One sample through one cut: its head run once (none for the input cut), then the tail on
    each lossy encoding's decoded activation; encoding → whether the metric passed."""
    values = {t: feed[t] for t in tensors} if head is None else dict(zip(tensors, head.run(list(tensors), feed)))
    return {
        encoding: _passes(tail, values, wire_codec.Codec(encoding), reference, metric, clamps) for encoding in lossy
    }


def _passes(
    tail, feed: Feed, codec: wire_codec.Codec, reference: list[np.ndarray], metric: Metric, clamps: Mapping[str, Clamp]
) -> bool:
    wire = {n: wire_codec.decode(wire_codec.encode(n, a, codec, clamps.get(n))) for n, a in feed.items()}
    split = tail.run(None, wire)
    try:
        return bool(metric.passes(reference, split))
    except Exception as err:  # a plug-in's own failure: name it, never a traceback
        raise SplitInferError(f"metric {metric.name!r} failed on a sample: {type(err).__name__}: {err}") from err
