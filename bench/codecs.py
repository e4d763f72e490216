"""Bytes on the wire vs task accuracy: every codec at a spread of cuts of real trained models.

For each model and cut, on `--inputs` real inputs: the activation's raw fp32 size, each codec's
bytes on the wire (whole tensor messages), compression ratio, encode and decode time (median, one
core), and the agreement of the split model's *task* result with the unsplit model's:

    ppocr_det     PP-OCRv4 detector inside the full OCR pipeline: recognised text identical,
                  on scikit-image's scanned page and rendered documents
    ppocr_rec     PP-OCRv4 recogniser: decoded text identical, on text lines cropped from them
                  and cut at word gaps to fit its 48×320 input (see splitter.tasks.ocr.word_groups)
    ppocr_cls     PP-OCR text-direction classifier: class identical, on those lines, every
                  other one upside down
    efficientnet_lite0  the default model, ImageNet-trained: top-1 identical, on scikit-image
                  photos and crops and mirror images of them (splitter.models.evaluation_images)
    mobilenet_v2  the untrained classifier (seeded, BatchNorm calibrated), the same way; its
                  nearly flat logits make its top-1 fragile, so it is not run by default

A cut whose tensors only clamps read (a convolution before its ReLU6) is clamped to that range
before encoding, as the device does (splitter.graph.clamps); the table shows the range beside the
cut's name.

Then, per cut, the codec with the fewest bytes that keeps agreement ≥ 99% and encodes + decodes in
≤ 1 ms per 100 KB of raw activation (or in ≤ 0.1 ms in all, for tensors of a few KB) (the target: that codec sends ≥ 4× fewer bytes than raw fp32).

    .venv/bin/python bench/codecs.py [--models ppocr_det,ppocr_rec,ppocr_cls,efficientnet_lite0] [--inputs N] [--cuts 5]

`--inputs` defaults to 128 for the classifiers and 20 for the OCR models (each OCR input runs the
whole OCR pipeline once per codec).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from protos import codec as wire_codec
from splitter.export.bundle import split_model
from splitter.graph.cuts import Cut
from splitter.pipeline import model_cuts
from splitter.profile.timing import session
from splitter.sources import ModelSource, load_source

# Plain int8 is left out: int8+zstd is smaller at the same error everywhere. fp32+zstd is the
# lossless choice for a model so sensitive that any rounding changes its task result.
CODECS = ("fp32+zstd", "fp16+zstd", "int8+zstd", "int8ch+zstd", "int4ch+zstd")
TARGET_AGREEMENT = 0.99
TARGET_RATIO = 4.0
TARGET_MS_PER_100KB = 1.0
# A tensor of a few KB pays the encoder's fixed cost (~0.03 ms of calls and a zstd frame), which per
# 100 KB reads as slow; at this much in all, a codec is fast whatever the size.
FAST_ENOUGH_MS = 0.1


@dataclass(frozen=True)
class Task:
    """Real inputs of one model and how to score a split model's outputs against the unsplit's."""

    inputs: list[dict[str, np.ndarray]]
    # (input index, model outputs) → a result comparable with ==
    result: Callable[[int, list[np.ndarray]], object]
    # What the inputs are, for the table's title.
    description: str


def classifier_task(source: ModelSource, count: int) -> Task:
    inputs = [feed for _, feed in source.samples(count)]
    return Task(
        inputs,
        lambda _i, outputs: int(np.argmax(outputs[0])),
        f"{count} inputs: scikit-image photos and views of them; metric: top-1 identical",
    )


def detector_task(source: ModelSource, count: int) -> Task:
    from splitter.tasks import ocr

    engine = ocr._engine()
    docs = [image for _, image in ocr.documents(count)]
    feeds = [{"x": engine.text_det.get_preprocess(max(d.shape[:2]))(d)} for d in docs]
    references = [ocr.read(d) for d in docs]

    def result(index: int, outputs: list[np.ndarray]) -> object:
        reading = ocr.read(docs[index], lambda _x: outputs, reference=references[index])
        return reading.text

    return Task(feeds, result, f"{count} documents: scikit-image's page and rendered text; metric: OCR text identical")


def recogniser_task(source: ModelSource, count: int) -> Task:
    from splitter.tasks import ocr

    engine = ocr._engine()
    (shape,) = source.input_shapes.values()
    width_ratio = shape[3] / shape[2]
    lines = [
        {"x": engine.text_rec.resize_norm_img(line, width_ratio)[None]} for line in ocr.text_lines(count, width_ratio)
    ]
    return Task(
        lines,
        lambda _i, outputs: engine.text_rec.postprocess_op(outputs[0])[0][0],
        f"{count} text lines; metric: text identical",
    )


def direction_task(source: ModelSource, count: int) -> Task:
    from splitter.tasks import ocr

    engine = ocr._engine()
    (shape,) = source.input_shapes.values()
    lines = ocr.text_lines(count, shape[3] / shape[2])
    # Every other line upside down, so both classes (0°, 180°) are asked for.
    feeds = [
        {"x": engine.text_cls.resize_norm_img(np.ascontiguousarray(np.rot90(line, 2 * (i % 2))))[None]}
        for i, line in enumerate(lines)
    ]
    return Task(
        feeds,
        lambda _i, outputs: int(np.argmax(outputs[0])),
        f"{count} text lines, every other one upside down; metric: class identical",
    )


TASKS = {
    "ppocr_det": detector_task,
    "ppocr_rec": recogniser_task,
    "ppocr_cls": direction_task,
    "efficientnet_lite0": classifier_task,
    "mobilenet_v2": classifier_task,
}
DEFAULT_MODELS = ("ppocr_det", "ppocr_rec", "ppocr_cls", "efficientnet_lite0")
# 128 classifier inputs: at 99 % one flip in 100 is allowed; at 64, none (63/64 is 98.4 %).
CLASSIFIER_INPUTS, OCR_INPUTS = 128, 20


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_cut(source: ModelSource, cut: Cut, task: Task, references: list[object]) -> list[tuple]:
    head_model, tail_model = split_model(source.model, cut)
    head, tail = session(head_model, threads=1), session(tail_model, threads=1)
    names = [o.name for o in head.get_outputs()]
    activations = [dict(zip(names, head.run(None, feed))) for feed in task.inputs]
    raw = sum(a.nbytes for a in activations[0].values())
    # A tensor only clamps read is clamped before encoding, as the device does (protos.codec).
    clamps = source.graph.clamps
    rows = []
    for codec_name in CODECS:
        codec = wire_codec.Codec.parse(codec_name)
        agree, sizes = 0, []
        for index, acts in enumerate(activations):
            wire = [wire_codec.encode(n, a, codec, clamps.get(n)) for n, a in acts.items()]
            sizes.append(sum(t.ByteSize() for t in wire))
            outputs = tail.run(None, {t.name: wire_codec.decode(t) for t in wire})
            agree += task.result(index, outputs) == references[index]
        first = activations[0]
        encoded = [wire_codec.encode(n, a, codec, clamps.get(n)) for n, a in first.items()]
        encode_ms = median_ms(lambda: [wire_codec.encode(n, a, codec, clamps.get(n)) for n, a in first.items()])
        decode_ms = median_ms(lambda: [wire_codec.decode(t) for t in encoded])
        nbytes = statistics.median(sizes)
        rows.append((codec_name, raw, nbytes, raw / nbytes, encode_ms, decode_ms, agree / len(activations)))
    return rows


def _fast(codec_ms: float, raw_nbytes: int) -> bool:
    return codec_ms <= max(FAST_ENOUGH_MS, TARGET_MS_PER_100KB * raw_nbytes / 1e5)


def _clamp_note(source: ModelSource, cut: Cut) -> str:
    """ " [0,6]" when the cut's tensors are clamped to a range before encoding (every reader of them
    clamps them: splitter.graph.clamps), so the table says which figures had it."""
    ranges = {source.graph.clamps.get(name) for name in cut.tensors} - {None}
    if not ranges:
        return ""
    return " " + ",".join(
        f"[{lo if lo is not None else '-∞':g},{hi if hi is not None else '∞':g}]" for lo, hi in ranges
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument(
        "--inputs", type=int, default=None, help=f"default {CLASSIFIER_INPUTS} for classifiers, {OCR_INPUTS} for OCR"
    )
    parser.add_argument("--cuts", type=int, default=5, help="evenly spaced cuts per model (0: all)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # "on one core"
    console = Console(width=150)
    failures = []
    for name in args.models.split(","):
        source = load_source(name)
        candidates = [c for c in model_cuts(source) if not c.is_edge_only]
        step = max(1, len(candidates) // args.cuts) if args.cuts else 1
        cuts = candidates[step // 2 :: step][: args.cuts or None]
        count = args.inputs or (CLASSIFIER_INPUTS if TASKS[name] is classifier_task else OCR_INPUTS)
        task = TASKS[name](source, count)
        full = session(source.model, threads=1)
        references = [task.result(i, full.run(None, feed)) for i, feed in enumerate(task.inputs)]
        title = f"{name}: {task.description}; {len(cuts)} of {len(candidates)} cuts; oracle: the unsplit model's result"
        table = Table(title=title, title_justify="left")
        for header in (
            "cut",
            "n",
            "raw KB",
            "codec",
            "KB",
            "ratio",
            "enc ms",
            "dec ms",
            "ms/100KB",
            "agreement",
            "best",
        ):
            table.add_column(header, justify="left" if header in ("cut", "codec", "best") else "right")
        for cut in cuts:
            rows = bench_cut(source, cut, task, references)
            good = [r for r in rows if r[6] >= TARGET_AGREEMENT and _fast(r[4] + r[5], r[1])]
            best = min(good, key=lambda r: r[2]) if good else None
            if best is None or best[3] < TARGET_RATIO:
                failures.append(f"{name} {cut.name}: best {best[0] + f' {best[3]:.1f}×' if best else 'none'}")
            for codec_name, raw, nbytes, ratio, enc, dec, agreement in rows:
                per_100kb = (enc + dec) / (raw / 1e5)
                table.add_row(
                    cut.name + _clamp_note(source, cut),
                    str(len(cut.tensors)),
                    f"{raw / 1e3:,.1f}",
                    codec_name,
                    f"{nbytes / 1e3:,.1f}",
                    f"{ratio:.1f}×",
                    f"{enc:.2f}",
                    f"{dec:.2f}",
                    f"{per_100kb:.2f}",
                    f"{round(agreement * count)}/{count} ({agreement:.1%})",
                    "◀" if best is not None and codec_name == best[0] else "",
                )
            table.add_section()
        console.print(table)
    console.print(
        f"cuts where no codec keeps ≥ {TARGET_AGREEMENT:.0%} agreement with ≥ {TARGET_RATIO:g}× fewer bytes "
        f"and ≤ {TARGET_MS_PER_100KB:g} ms per 100 KB (or ≤ {FAST_ENOUGH_MS:g} ms in all): "
        + ("; ".join(failures) if failures else "none")
    )


if __name__ == "__main__":
    main()
