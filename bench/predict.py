"""DeviceProfile prediction error: per-cut head and tail latencies predicted from a DeviceProfile and
the Graph alone, against measurement, per model and per cut (median and worst absolute error).

Calibrates this machine with the fixed micro-benchmark suite (or loads `--device`), then for
MobileNetV2, ResNet-18 (registered models) and an ONNX file (PP-OCRv4's text detector from the
rapidocr-onnxruntime wheel, by default) cuts every `--every`-th cut out of the model and times
its head and its tail in onnxruntime, as a Profile does (fresh session, warm-up, the median of
runs after an idle gap), keeping each cut's fastest median over `--rounds` rounds.

Both sides run with one intra-op thread and are timed by default in the calling thread's CPU
time (`--clock cpu`), calibration included: on this shared 2-core machine other processes' load
otherwise adds tens of percent, at random, to either side. `--clock wall` times elapsed time.

    .venv/bin/python bench/predict.py [--every 2] [--rounds 3] [--clock cpu] [--device device.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from edge_runtime.calibration import calibrate, time_ms, write_profile
from splitter.cuts import Cut
from splitter.device_profile import DeviceProfile, predict_cut_ms
from splitter.graph import graph_from_onnx
from splitter.packaged import PACKAGED_MODELS
from splitter.pipeline import model_cuts
from splitter.profile import session
from splitter.sources import ModelSource, load_source

MODELS = [("mobilenet_v2", None), ("resnet18", None)]
DEFAULT_ONNX_SHAPE = (1, 3, 320, 320)


def measure_cuts(source: ModelSource, cuts: list[Cut], *, rounds: int, repeats: int, clock: str) -> dict[str, tuple[float, float]]:
    """(head ms, tail ms) of every cut with one thread: the fastest of `rounds` medians."""
    extractor = onnx.utils.Extractor(source.model)
    name, feed = source.samples(1)[0]
    inputs, outputs = list(feed), [v.name for v in source.model.graph.output]
    halves = {}
    for cut in cuts:
        head = session(extractor.extract_model(inputs, list(cut.tensors)), 1) if not cut.is_cloud_only else None
        sent = dict(zip(cut.tensors, head.run(None, feed))) if head is not None else {n: feed[n] for n in cut.tensors}
        tail = session(extractor.extract_model(list(cut.tensors), outputs), 1) if not cut.is_edge_only else None
        halves[cut.name] = (head, tail, sent)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for cut in cuts:
            head, tail, sent = halves[cut.name]
            head_ms = time_ms(lambda: head.run(None, feed), repeats, 2, 2.0, clock) if head is not None else 0.0
            tail_ms = time_ms(lambda: tail.run(None, sent), repeats, 2, 2.0, clock) if tail is not None else 0.0
            old = best.get(cut.name, (head_ms, tail_ms))
            best[cut.name] = (min(old[0], head_ms), min(old[1], tail_ms))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=Path, help="a DeviceProfile to use instead of calibrating now")
    parser.add_argument("--onnx", type=Path, help="the ONNX file (default: PP-OCRv4 det from rapidocr-onnxruntime)")
    parser.add_argument("--onnx-shape", default=",".join(map(str, DEFAULT_ONNX_SHAPE)))
    parser.add_argument("--every", type=int, default=2, help="measure every k-th cut (the all-on-device cut always)")
    parser.add_argument("--onnx-every", type=int, default=6, help="every k-th cut of the ONNX file (it has ~300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--show", type=int, default=8, help="cuts per model to list")
    parser.add_argument("--out", type=Path, default=Path("out/bench/device.json"), help="where the calibrated DeviceProfile goes")
    args = parser.parse_args()
    console = Console(width=160)

    if args.device:
        device = DeviceProfile.load(args.device)
    else:
        start = time.perf_counter()
        document = calibrate(1, rounds=3, clock=args.clock, name="bench")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        device = DeviceProfile.load(write_profile(document, args.out))
        console.print(f"calibrated {args.out} in {time.perf_counter() - start:.0f} s: NCHWc block {device.nchwc_block}, "
                      f"{len(device.coefficients)} kernel kinds, fixed cost per run {device.overhead_ms * 1e3:.0f} µs, clock {args.clock}")  # fmt: skip

    onnx_path = args.onnx or PACKAGED_MODELS["ppocr_det"].locate()
    specs = [(name, shape, args.every) for name, shape in MODELS]
    specs.append((str(onnx_path), tuple(int(d) for d in args.onnx_shape.split(",")), args.onnx_every))
    summary = []
    for spec, shape, every in specs:
        source = load_source(spec, input_shape=shape)
        graph = graph_from_onnx(source.model)
        all_cuts = model_cuts(source, include_input=True)
        cuts = [c for i, c in enumerate(all_cuts) if i % every == 0 or c.is_edge_only]
        measured = measure_cuts(source, cuts, rounds=args.rounds, repeats=args.repeats, clock=args.clock)
        rows, errors = [], {"head": [], "tail": []}
        for cut in cuts:
            predicted = predict_cut_ms(device, device, graph, cut)
            for side, m, p in zip(("head", "tail"), measured[cut.name], predicted):
                if m > 0:
                    errors[side].append((p - m) / m)
            rows.append((cut, measured[cut.name], predicted))
        label = f"{source.model_id} ({len(graph.ops)} ops, {'x'.join(map(str, source.input_shapes[next(iter(source.input_shapes))][1:]))})"
        table = Table(title=f"{label}: {len(cuts)} of {len(all_cuts)} cuts, one thread, {args.clock} time", title_justify="left")
        for header in ("cut", "head meas ms", "head pred ms", "err", "tail meas ms", "tail pred ms", "err"):
            table.add_column(header, justify="left" if header == "cut" else "right")
        step = max(1, len(rows) // args.show)
        for cut, (mh, mt), (ph, pt) in rows[::step]:
            err = lambda m, p: f"{(p - m) / m:+.0%}" if m > 0 else "-"  # noqa: E731
            table.add_row(cut.name[:48], f"{mh:.2f}", f"{ph:.2f}", err(mh, ph), f"{mt:.2f}", f"{pt:.2f}", err(mt, pt))
        console.print(table)
        both = np.abs(errors["head"] + errors["tail"])
        line = {side: (float(np.median(np.abs(e))), float(np.max(np.abs(e)))) for side, e in errors.items()}
        summary.append((label, line, float(np.median(both)), float(np.max(both))))
        console.print(
            f"{source.model_id}: head median |error| {line['head'][0]:.1%} (worst {line['head'][1]:.0%}), "
            f"tail {line['tail'][0]:.1%} (worst {line['tail'][1]:.0%}); all {statistics.median(both):.1%}",
            highlight=False,
        )
        uncovered = device.uncovered(graph)
        if uncovered:
            console.print(f"  priced by the fallback model: {', '.join(sorted(uncovered))}", highlight=False)
    console.print("\nsummary (target: median |error| ≤ 10% of measured head/tail latency)")
    for label, line, median, worst in summary:
        verdict = "ok" if median <= 0.10 else "over target"
        console.print(f"  {label:45s} median {median:.1%}  worst {worst:.0%}  (head {line['head'][0]:.1%}, tail {line['tail'][0]:.1%})  {verdict}", highlight=False)


if __name__ == "__main__":
    main()
