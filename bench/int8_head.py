"""The int8 head (`splitinfer export --quantize-head`) on the default model: top-1 agreement with
the unsplit model and head latency, before and after quantisation, at cuts through the network.

The head is quantised as export does it (static QDQ, per-channel int8 weights, uint8
activations, calibrated on the calibration photos, never on an evaluation input). Agreement is
measured on `--inputs` evaluation inputs (scikit-image photos and crops and mirror images of
them), with raw fp32 on the wire so that only the head's quantisation is measured; the oracle is
the unsplit fp32 model's top-1 class. Latency is the head alone, onnxruntime, one thread, pinned to
one core, median of 20 runs.

    .venv/bin/python bench/int8_head.py [--model efficientnet_lite0] [--inputs 64]
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from protos import codec as wire_codec
from splitter.export.bundle import split_model
from splitter.export.optimize import quantize_head
from splitter.export.verify import verify_split
from splitter.graph.cuts import find_cut
from splitter.pipeline import model_cuts
from splitter.profile.timing import median_ms, session
from splitter.sources import load_source

CUTS = {
    "efficientnet_lite0": ("_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14"),
    "mobilenet_v2": ("features.3", "features.6", "features.10", "features.13", "features.16"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(CUTS))
    parser.add_argument("--inputs", type=int, default=64)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    source = load_source(args.model)
    cuts = model_cuts(source)
    samples = source.samples(args.inputs)
    calibration = source.calibration_samples(16)
    fp32 = wire_codec.Codec("fp32")
    table = Table(
        title=f"{args.model}: int8 head vs fp32 head; agreement on {len(samples)} evaluation inputs (photos and views), "
        f"calibrated on {len(calibration)} other photos, fp32 on the wire; oracle: the unsplit model's top-1",
        title_justify="left",
    )
    for header in (
        "cut",
        "fp32 head ms",
        "int8 head ms",
        "speed-up",
        "fp32 MB",
        "int8 MB",
        "top-1 fp32 head",
        "top-1 int8 head",
    ):
        table.add_column(header, justify="left" if header == "cut" else "right")
    feed = samples[0][1]
    for module in CUTS[args.model]:
        cut = find_cut(cuts, module)
        head, tail = split_model(source.model, cut)
        quantized = quantize_head(head, calibration)
        before, after = session(head, threads=1), session(quantized, threads=1)
        ms_before = median_ms(lambda: before.run(None, feed), 20, 3)
        ms_after = median_ms(lambda: after.run(None, feed), 20, 3)
        agree_before = verify_split(source.model, head, tail, samples, fp32).top1_agreement_codec
        agree_after = verify_split(source.model, quantized, tail, samples, fp32).top1_agreement_codec
        n = len(samples)
        table.add_row(
            f"{module} ({cut.name})",
            f"{ms_before:.2f}",
            f"{ms_after:.2f}",
            f"{ms_before / ms_after:.2f}×",
            f"{head.ByteSize() / 1e6:.2f}",
            f"{quantized.ByteSize() / 1e6:.2f}",
            f"{round(agree_before * n)}/{n}",
            f"{round(agree_after * n)}/{n}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
