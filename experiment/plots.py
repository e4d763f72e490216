"""The figures of an experiment, each as PNG and SVG, drawn from results.csv and meta.json alone.

- `latency_vs_cut_<model>`: predicted latency of every cut (x: ops on the device) at each condition,
  one panel per codec, the predicted best cut of each condition starred (the best of all cuts,
  the raw input included whatever the policies' constraints; where it moves as the bandwidth
  changes is the literature's classic figure), and the measured median of each cell at its cut.
- `timeline_<model>_<condition>` (trace conditions): every request's latency over time per policy,
  above the cut each request ran (ops on the device: the adaptive runtime's switches show as
  steps) and the uplink rate the trace offered, the rate each request met and the adaptive
  runtime's estimate; the legend names each policy's cut.
- `cdf_<model>`: latency CDF per policy (and codec), one panel per condition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiment.results import RequestRecord, ok

FORMATS = ("png", "svg")


def _pyplot():
    import matplotlib

    # No display on servers and in tests; Agg draws to files only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    _pyplot().close(figure)
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def draw_all(records: Sequence[RequestRecord], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    paths: list[Path] = []
    for model, info in meta["models"].items():
        mine = [r for r in records if r.model == model]
        cells = [c for c in meta["cells"] if c["model"] == model]
        paths += latency_vs_cut(model, info["predictions"], cells, mine, out_dir)
        for condition in meta["conditions"]:
            if "trace" in condition:
                paths += timeline(model, condition["name"], cells, mine, out_dir)
        paths += cdf(model, [c["name"] for c in meta["conditions"]], mine, out_dir)
    return paths


def latency_vs_cut(
    model: str,
    predictions: dict[str, dict[str, Any]],
    cells: list[dict],
    records: Sequence[RequestRecord],
    out_dir: Path,
) -> list[Path]:
    plt = _pyplot()
    codecs = sorted({codec for per_codec in predictions.values() for codec in per_codec})
    figure, axes = plt.subplots(1, len(codecs), figsize=(7 * len(codecs), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, codec in zip(axes[0], codecs):
        for i, (condition, per_codec) in enumerate(predictions.items()):
            if codec not in per_codec:
                continue
            colour = colours[i % len(colours)]
            curve = per_codec[codec]
            x, y = np.array(curve["head_size"]), np.array(curve["predicted_ms"])
            order = np.argsort(x, kind="stable")
            ax.plot(x[order], y[order], color=colour, linewidth=1, label=f"{condition} predicted")
            best = int(np.argmin(y))
            ax.plot(
                x[best], y[best], marker="*", markersize=14, color=colour, markeredgecolor="black", linestyle="none"
            )
            for cell in (c for c in cells if c["condition"] == condition and c["codec"] == codec):
                totals = [
                    r.total_ms
                    for r in ok(records)
                    if (r.policy, r.codec, r.condition) == (cell["policy"], codec, condition)
                ]
                if totals:
                    ax.plot(
                        cell["head_size"],
                        float(np.median(totals)),
                        marker="o",
                        color=colour,
                        markeredgecolor="black",
                        linestyle="none",
                    )
        ax.set_yscale("log")
        ax.set_xlabel("ops on the device (cut position)")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_title(f"{model}, {codec}: ★ predicted best cut, ● measured median")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(figure, out_dir, f"latency_vs_cut_{_slug(model)}")


def timeline(
    model: str, condition: str, cells: list[dict], records: Sequence[RequestRecord], out_dir: Path
) -> list[Path]:
    plt = _pyplot()
    mine = [c for c in cells if c["condition"] == condition]
    figure, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]}
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, cell in enumerate(mine):
        colour = colours[i % len(colours)]
        group = [
            r for r in ok(records) if (r.policy, r.codec, r.condition) == (cell["policy"], cell["codec"], condition)
        ]
        label = f"{cell['policy']} / {cell['codec']}: {_what_ran(cell, group)}"
        top.plot(
            [r.t_s for r in group], [r.total_ms for r in group], marker=".", linewidth=0.8, color=colour, label=label
        )
        middle.step([r.t_s for r in group], [r.head_size for r in group], where="post", color=colour, linewidth=1)
        _plot_link(bottom, cell, group, colour)
    series = max((c["rate_series"] for c in mine), key=len, default=[])
    if series:
        t, rate = zip(*series)
        bottom.step(t, rate, where="post", color="black", linewidth=0.8, label="trace uplink rate (1 s mean)")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(fontsize=7)
    top.set_ylabel("latency, ms")
    top.set_yscale("log")
    top.set_title(f"{model} on {condition}: latency over time, the cut each request ran, the link")
    top.legend(fontsize=7)
    top.grid(True, alpha=0.3)
    middle.set_ylabel("cut: ops on device")
    middle.grid(True, alpha=0.3)
    bottom.set_ylabel("uplink, Mbit/s")
    bottom.set_xlabel("time since the trace started, s")
    bottom.grid(True, alpha=0.3)
    return _save(figure, out_dir, f"timeline_{_slug(model)}_{_slug(condition)}")


def _what_ran(cell: dict, group: Sequence[RequestRecord]) -> str:
    """The cut a cell's requests ran (an adaptive cell may keep one throughout), or how many."""
    cuts = sorted({r.cut for r in group})
    if len(cuts) == 1:
        what = f"cut {cuts[0]} ({group[0].head_size} ops on device)"
    elif cuts:
        what = f"{len(cuts)} cuts, {cell.get('switches', 0)} switches"
    else:
        what = f"cut {cell['cut']}"
    raced = [r for r in group if r.winner]
    if raced:
        what += f", device answered {sum(r.winner == 'device' for r in raced) / len(raced):.0%}"
    return what


def _plot_link(axes, cell: dict, group: Sequence[RequestRecord], colour: str) -> None:
    """The rate each request met, and an adaptive cell's estimate of it."""
    axes.plot(
        [r.t_s for r in group], [r.rate_mbps for r in group], marker=".", linestyle="none", markersize=4, color=colour
    )
    estimates = [(r.t_s, r.estimate_mbps) for r in group if not math.isnan(r.estimate_mbps)]
    if estimates:
        axes.plot(
            *zip(*estimates),
            linestyle="--",
            linewidth=0.9,
            color=colour,
            label=f"{cell['policy']}: its bandwidth estimate",
        )


def cdf(model: str, conditions: list[str], records: Sequence[RequestRecord], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    columns = min(2, len(conditions))
    rows = math.ceil(len(conditions) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    for ax, condition in zip(axes.flat, conditions):
        mine = [r for r in ok(records) if r.condition == condition]
        for policy, codec in sorted({(r.policy, r.codec) for r in mine}):
            totals = np.sort([r.total_ms for r in mine if (r.policy, r.codec) == (policy, codec)])
            ax.step(totals, np.arange(1, len(totals) + 1) / len(totals), where="post", label=f"{policy} / {codec}")
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency, ms")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{model} on {condition}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(conditions) :]:
        ax.set_visible(False)
    return _save(figure, out_dir, f"cdf_{_slug(model)}")
