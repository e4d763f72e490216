"""Head and tail latency of the default model's cuts next to MobileNetV2's, in onnxruntime with
one thread, on this machine (no slowdown).

For each model, the cut at the end of each stage of blocks (the last cut inside the module) and
the whole model: head ms, tail ms, the activation's raw fp32 size and its int8+zstd size, as
`splitinfer profile` measures them (median of `--repeats` timed runs after warm-up, one input:
the first evaluation photo). Both models are profiled in the same run, pinned to one core, so
their ratios compare; absolute times move with the machine's load.

    .venv/bin/python bench/models.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from splitter.graph.cuts import find_cut
from splitter.models import model_info
from splitter.pipeline import model_cuts, profile_source
from splitter.profile.timing import ProfileSettings
from splitter.sources import load_source

# The module whose last cut ends each stage of blocks (a stage: the blocks of one output width).
STAGE_ENDS = {
    "efficientnet_lite0": (
        "_conv_stem",
        "_blocks.0",
        "_blocks.2",
        "_blocks.4",
        "_blocks.7",
        "_blocks.10",
        "_blocks.14",
        "_blocks.15",
        "_conv_head",
    ),
    "mobilenet_v2": (
        "features.0",
        "features.1",
        "features.3",
        "features.6",
        "features.10",
        "features.13",
        "features.16",
        "features.17",
        "features.18",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    console = Console(width=150)
    settings = ProfileSettings(edge_threads=1, server_threads=1, repeats=args.repeats, codecs=("int8+zstd",))
    table = Table(
        title=f"head and tail per stage end, onnxruntime 1 thread, one core, median of {args.repeats} runs, "
        "input: scikit-image's astronaut photo",
        title_justify="left",
    )
    for header in ("model", "stage end", "cut", "head ms", "tail ms", "raw KB", "int8+zstd KB"):
        table.add_column(header, justify="left" if header in ("model", "stage end", "cut") else "right")
    for name, stage_ends in STAGE_ENDS.items():
        source = load_source(name)
        profile = profile_source(source, settings, per_op=False)
        by_name = {c.name: c for c in profile.cuts}
        cuts = model_cuts(source)
        trained = "trained" if model_info(name).trained else "untrained"
        for stage in stage_ends:
            cut = by_name[find_cut(cuts, stage).name]
            table.add_row(
                f"{name} ({trained})",
                stage,
                cut.name,
                f"{cut.head_ms:.2f}",
                f"{cut.tail_ms:.2f}",
                f"{cut.raw_nbytes / 1e3:,.1f}",
                f"{cut.codecs['int8+zstd'].nbytes / 1e3:,.1f}",
            )
        whole = by_name["output"]
        table.add_row(f"{name} ({trained})", "whole model", "output", f"{whole.head_ms:.2f}", "-", "-", "-")
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
