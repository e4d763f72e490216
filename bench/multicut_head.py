"""How a device should store the heads of several cuts: measured, on one model.

Three ways to carry the heads of `--cuts` cuts (default: the cuts the planner chooses somewhere
between a CAT1 and a fast Wi-Fi uplink, plus as many evenly spaced ones as needed):

    separate    one head.onnx per cut: each weight stored once per cut that runs it
    multi-exit  one head.onnx whose outputs are every cut's tensors, run for the chosen cut's
    segments    the deepest head cut at every cut (what export_multi_cut writes), run up to the
                chosen cut

Bytes on the device for each, and the head's time at each cut (median of `--repeats`, one thread):
onnxruntime runs every node of a model whatever outputs are asked for, so a multi-exit head costs
the deepest cut's time at every cut, while segments cost what a separate head does.

    .venv/bin/python bench/multicut_head.py [--model mobilenet_v2] [--cuts 6] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from splitter.export.bundle import _segment_files, split_model
from splitter.pipeline import model_cuts
from splitter.sources import load_source


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _median_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument(
        "--cuts",
        type=int,
        default=6,
        help="how many cuts the bundle carries (evenly spaced, the last all on the device)",
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    source = load_source(args.model)
    every = [c for c in model_cuts(source) if not c.is_cloud_only]
    step = max(1, len(every) // args.cuts)
    cuts = every[step - 1 :: step][: args.cuts - 1] + [every[-1]]
    feed = source.samples(1)[0][1]
    inputs = list(feed)

    separate = [split_model(source.model, cut)[0] for cut in cuts]
    extractor = onnx.utils.Extractor(source.model)
    multi_exit = extractor.extract_model(inputs, list(dict.fromkeys(t for c in cuts for t in c.tensors)))
    segments = _segment_files(source.model, cuts)
    with tempfile.TemporaryDirectory() as tmp:

        def size(models) -> int:
            total = 0
            for i, model in enumerate(models):
                path = Path(tmp) / f"{i}.onnx"
                path.write_bytes(model.SerializeToString())
                total += path.stat().st_size
            return total

        bytes_separate = size(separate)
        bytes_multi = size([multi_exit])
        bytes_segments = size([part for _, part in segments])

    multi_session = _session(multi_exit)
    segment_sessions = [(segment, _session(part)) for segment, part in segments]
    table = Table(
        title=f"{args.model}: head time at each cut, ms (median of {args.repeats}, 1 thread)", title_justify="left"
    )
    for header in ("cut", "ops on device", "separate head", "multi-exit head", "segments"):
        table.add_column(header, justify="left" if header == "cut" else "right")
    for index, (cut, head) in enumerate(zip(cuts, separate)):
        names = list(cut.tensors)
        alone = _session(head)

        def run_segments(count: int = index + 1) -> None:
            values = dict(feed)
            for segment, part in segment_sessions[:count]:
                values.update(
                    zip(segment.outputs, part.run(list(segment.outputs), {n: values[n] for n in segment.inputs}))
                )

        table.add_row(
            cut.name,
            str(cut.head_size),
            f"{_median_ms(lambda: alone.run(names, feed), args.repeats):.2f}",
            f"{_median_ms(lambda: multi_session.run(names, feed), args.repeats):.2f}",
            f"{_median_ms(run_segments, args.repeats):.2f}",
        )
    console = Console()
    console.print(table)
    storage = Table(title=f"{args.model}: bytes of the heads of {len(cuts)} cuts on the device", title_justify="left")
    for header in ("layout", "bytes", "÷ segments"):
        storage.add_column(header, justify="left" if header == "layout" else "right")
    for name, value in (
        ("separate heads", bytes_separate),
        ("one multi-exit head", bytes_multi),
        ("segments (export_multi_cut)", bytes_segments),
    ):
        storage.add_row(name, f"{value:,}", f"{value / bytes_segments:.2f}")
    console.print(storage)


if __name__ == "__main__":
    main()
