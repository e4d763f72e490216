"""DeviceProfile prediction error: per-cut head and tail latencies predicted from a DeviceProfile and
the Graph alone, against measurement, per model and per cut (median and worst absolute error).

Calibrates this machine with the fixed micro-benchmark suite (or loads `--device`) and, for
MobileNetV2, ResNet-18 (registered models) and an ONNX file (PP-OCRv4's text detector from the
rapidocr-onnxruntime wheel, by default), cuts every `--every`-th cut out of the model and times
its head and its tail in onnxruntime as a Profile does (a fresh session, warm-up, the median of
runs after an idle gap). Each quantity keeps its fastest median over `--rounds` rounds.

This machine is shared (2 cores, other processes coming and going), and their load slows every
run, by up to half, whichever clock times it. A target device is calibrated while idle; here the
suite's benchmarks and the cuts' heads and tails are timed interleaved, in a shuffled order every
round, so that the calibration and the measurement it is judged against see the same load, not
two different minutes of it. Both sides run with one intra-op thread, timed by default in the
calling thread's CPU time (`--clock cpu`), which preemption does not inflate.

    .venv/bin/python bench/predict.py [--every 3] [--rounds 4] [--clock cpu] [--device device.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.progress import track
from rich.table import Table

from edge_runtime.calibration import (
    SUITE_DIR,
    Timing,
    document,
    keep_fastest,
    load_suite,
    measure_benchmark,
    probe_block_size,
    suite_feeds,
    suite_order,
    time_ms,
    write_profile,
)
from protos.device_profile import DeviceProfile
from splitter.graph.cuts import Cut
from splitter.graph.graph import Graph, graph_from_onnx
from splitter.packaged import PACKAGED_MODELS
from splitter.pipeline import model_cuts
from splitter.profile.predict.device import predict_cut_ms, uncovered
from splitter.profile.timing import session
from splitter.sources import load_source

MODELS = [("mobilenet_v2", None), ("resnet18", None)]
DEFAULT_ONNX_SHAPE = (1, 3, 320, 320)


@dataclass
class Half:
    """A head or a tail of one cut, ready to time: its model and the feed it takes."""

    key: tuple[str, str, str]  # (model, cut, "head" | "tail")
    model: bytes
    feed: dict[str, np.ndarray]


@dataclass
class Subject:
    label: str
    model_id: str
    graph: Graph
    cuts: list[Cut]
    total_cuts: int


def cut_halves(model_id: str, model: onnx.ModelProto, feed: dict[str, np.ndarray], cuts: list[Cut]) -> list[Half]:
    extractor = onnx.utils.Extractor(model)
    inputs, outputs = list(feed), [v.name for v in model.graph.output]
    halves = []
    for cut in cuts:
        if cut.is_cloud_only:
            sent = {name: feed[name] for name in cut.tensors}
        else:
            head = extractor.extract_model(inputs, list(cut.tensors)).SerializeToString()
            sent = dict(zip(cut.tensors, session(head, 1).run(None, feed)))
            halves.append(Half((model_id, cut.name, "head"), head, feed))
        if not cut.is_edge_only:
            halves.append(
                Half(
                    (model_id, cut.name, "tail"),
                    extractor.extract_model(list(cut.tensors), outputs).SerializeToString(),
                    sent,
                )
            )
    return halves


def measurement_noise(rounds_per_half: list[list[float]]) -> float:
    """Median relative difference between the fastest of the even rounds and of the odd rounds, over
    every head and tail: what the measurement the predictions are judged against disagrees with
    itself (nan with fewer than two rounds)."""
    differences = [abs(min(v[0::2]) - min(v[1::2])) / min(v) for v in rounds_per_half if len(v) >= 2 and min(v) > 0]
    return float(np.median(differences)) if differences else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=Path, help="a DeviceProfile to use instead of calibrating now")
    parser.add_argument("--onnx", type=Path, help="the ONNX file (default: PP-OCRv4 det from rapidocr-onnxruntime)")
    parser.add_argument("--onnx-shape", default=",".join(map(str, DEFAULT_ONNX_SHAPE)))
    parser.add_argument("--every", type=int, default=3, help="measure every k-th cut (the all-on-device cut always)")
    parser.add_argument("--onnx-every", type=int, default=10, help="every k-th cut of the ONNX file (it has ~300)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--show", type=int, default=8, help="cuts per model to list")
    parser.add_argument(
        "--out", type=Path, default=Path("out/bench/device.json"), help="where the calibrated DeviceProfile goes"
    )
    args = parser.parse_args()
    console = Console(width=160)
    timing = Timing(repeats=args.repeats, rounds=args.rounds, clock=args.clock)

    onnx_path = args.onnx or PACKAGED_MODELS["ppocr_det"].locate()
    specs = [(name, shape, args.every) for name, shape in MODELS]
    specs.append((str(onnx_path), tuple(int(d) for d in args.onnx_shape.split(",")), args.onnx_every))
    subjects, halves = [], []
    for spec, shape, every in specs:
        source = load_source(spec, input_shape=shape)
        all_cuts = model_cuts(source, include_input=True)
        cuts = [c for i, c in enumerate(all_cuts) if i % every == 0 or c.is_edge_only]
        graph = graph_from_onnx(source.model)
        size = "x".join(map(str, next(iter(source.input_shapes.values()))[1:]))
        subjects.append(
            Subject(f"{source.model_id} ({len(graph.ops)} ops, {size})", source.model_id, graph, cuts, len(all_cuts))
        )
        halves.extend(cut_halves(source.model_id, source.model, source.samples(1)[0][1], cuts))

    # One task per suite benchmark and per head or tail, shuffled anew every round.
    manifest = load_suite() if args.device is None else None
    tasks: list[tuple[str, object]] = [("half", half) for half in halves]
    if manifest is not None:
        tasks += [("benchmark", entry) for entry in suite_order(manifest)]
        feeds = suite_feeds(manifest)
    suite_times: dict[str, dict[str, float]] = {}
    # Every head's and tail's median in every round: the fastest is the measurement; the fastest of
    # the even rounds against that of the odd ones tells how far two measurements disagree.
    per_round: dict[tuple[str, str, str], list[float]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            order = tasks[:]
            random.Random(round_index).shuffle(order)
            for kind, task in track(
                order, description=f"round {round_index + 1}/{args.rounds}", transient=True, console=console
            ):
                if kind == "benchmark":
                    one_round = Timing(timing.repeats, timing.warmup, timing.idle_gap_ms, 1, timing.clock)
                    keep_fastest(
                        suite_times,
                        task["name"],
                        measure_benchmark(task, feeds[task["name"]], 1, one_round, SUITE_DIR, tmp),
                    )
                else:
                    run = session(task.model, 1)
                    ms = time_ms(
                        lambda: run.run(None, task.feed),
                        timing.repeats,
                        timing.warmup,
                        timing.idle_gap_ms,
                        timing.clock,
                    )
                    per_round.setdefault(task.key, []).append(ms)
    if manifest is not None:
        block = probe_block_size(1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        device = DeviceProfile.load(
            write_profile(
                document(manifest, suite_times, threads=1, block=block, timing=timing, name="bench"), args.out
            )
        )
        console.print(
            f"calibrated {args.out} and measured {len(halves)} heads and tails in {time.perf_counter() - start:.0f} s: "
            f"NCHWc block {device.nchwc_block}, {len(device.coefficients)} kernel kinds, fixed cost per run "
            f"{device.overhead_ms * 1e3:.0f} µs, clock {args.clock}",
            highlight=False,
        )
    else:
        device = DeviceProfile.load(args.device)

    measured = {key: min(values) for key, values in per_round.items()}
    summary = []
    for subject in subjects:
        rows, errors = [], {"head": [], "tail": []}
        for cut in subject.cuts:
            predicted = predict_cut_ms(device, device, subject.graph, cut)
            actual = tuple(measured.get((subject.model_id, cut.name, side), 0.0) for side in ("head", "tail"))
            for side, m, p in zip(("head", "tail"), actual, predicted):
                if m > 0:
                    errors[side].append((p - m) / m)
            rows.append((cut, actual, predicted))
        table = Table(
            title=f"{subject.label}: {len(subject.cuts)} of {subject.total_cuts} cuts, one thread, {args.clock} time",
            title_justify="left",
        )
        for header in ("cut", "head meas ms", "head pred ms", "err", "tail meas ms", "tail pred ms", "err"):
            table.add_column(header, justify="left" if header == "cut" else "right")
        step = max(1, len(rows) // args.show)
        for cut, (mh, mt), (ph, pt) in rows[::step]:
            err = lambda m, p: f"{(p - m) / m:+.0%}" if m > 0 else "-"  # noqa: E731
            table.add_row(cut.name[:48], f"{mh:.2f}", f"{ph:.2f}", err(mh, ph), f"{mt:.2f}", f"{pt:.2f}", err(mt, pt))
        console.print(table)
        both = np.abs(errors["head"] + errors["tail"])
        line = {side: (float(np.median(np.abs(e))), float(np.max(np.abs(e)))) for side, e in errors.items()}
        bias = float(np.median(errors["head"] + errors["tail"]))
        noise = measurement_noise([values for key, values in per_round.items() if key[0] == subject.model_id])
        summary.append((subject.label, line, float(np.median(both)), float(np.max(both)), bias, noise))
        console.print(
            f"{subject.model_id}: head median |error| {line['head'][0]:.1%} (worst {line['head'][1]:.0%}), "
            f"tail {line['tail'][0]:.1%} (worst {line['tail'][1]:.0%}); all {statistics.median(both):.1%}, median signed {bias:+.1%}",
            highlight=False,
        )
        fallback_kinds = uncovered(device, subject.graph)
        if fallback_kinds:
            console.print(f"  priced by the fallback model: {', '.join(sorted(fallback_kinds))}", highlight=False)
    console.print("\nsummary (target: median |error| ≤ 10% of measured head/tail latency)")
    for label, line, median, worst, bias, noise in summary:
        verdict = "ok" if median <= 0.10 else "over target"
        console.print(
            f"  {label:45s} median {median:.1%}  worst {worst:.0%}  signed {bias:+.1%}  (head {line['head'][0]:.1%}, "
            f"tail {line['tail'][0]:.1%})  {verdict};  measurement vs itself: median {noise:.1%}",
            highlight=False,
        )


if __name__ == "__main__":
    main()
