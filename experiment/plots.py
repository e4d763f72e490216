"""The figures of an experiment, each as PNG and SVG, drawn from results.csv and meta.json alone.

- `latency_vs_cut_<model>`: predicted latency of every cut (x: ops on the device) at each condition
  (a colour each), one panel per codec, the predicted best cut of each condition starred (the best
  of all cuts, the raw input included whatever the policies' constraints; where it moves as the
  bandwidth changes is the literature's classic figure), and each cell's measured median at its
  cut, a marker shape per policy (an adaptive cell's at the cut most of its requests ran; the
  policies' markers at one cut side by side).
- `timeline_<model>_<condition>` (trace conditions): every request's latency over time per policy,
  above the cut each request ran (ops on the device: the adaptive runtime's switches show as
  steps) and the uplink rate the trace offered with the adaptive runtime's estimate of it; the
  legend names each policy's cut. The rate axis spans the trace's own range: an estimate beyond it
  is drawn as a mark on the axis's edge, not allowed to squash the trace flat.
- `cdf_<model>`: latency CDF per policy (and codec), one panel per condition.

Every figure is built by a function that returns the matplotlib Figure (tests read its ticks and
legends back) and saved by `draw_all`. Log axes are ticked at plain numbers (20, 50, 100), never
`2×10¹`, and only as many as fit without their labels touching; legends sit beside the axes, not
on the data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiment.config import ADAPTIVE, split_race
from experiment.results import RequestRecord, ok

FORMATS = ("png", "svg")
# Marker shapes of the policies' measured medians, in the order policies first appear.
_POLICY_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h", "<", ">")
# Mantissas of a log axis's ticks, coarsest first (plain_log_ticks takes the first that labels the
# whole axis).
_LOG_STEPS = ((1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10)), (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
# How far apart (in ops on the device) the measured medians of different policies at one cut are drawn.
_DODGE = 1.2
# The rate axis of a timeline reaches this far above the trace's highest 1 s rate.
_RATE_HEADROOM = 1.15


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
        # The legends beside the axes are outside the layout: the saved image is grown to hold them.
        legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
        figure.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=legends)
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
        figure = latency_vs_cut_figure(model, info["predictions"], cells, mine)
        paths += _save(figure, out_dir, f"latency_vs_cut_{_slug(model)}")
        for condition in meta["conditions"]:
            if "trace" in condition:
                figure = timeline_figure(model, condition["name"], cells, mine)
                paths += _save(figure, out_dir, f"timeline_{_slug(model)}_{_slug(condition['name'])}")
        figure = cdf_figure(model, [c["name"] for c in meta["conditions"]], mine)
        paths += _save(figure, out_dir, f"cdf_{_slug(model)}")
    return paths


def plain_log_ticks(axes, which: str) -> None:
    """Ticks of `axes`' log-scaled x or y axis at plain numbers within its current limits: the
    coarsest of the 1-2-5, 1-2-3-5, every-digit and half-digit sequences that gives three ticks and
    leaves neither end of the axis unlabelled for more than a quarter of it, or evenly spaced round
    numbers on a range too narrow for any (a latency between 24 and 30 ms); no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    axis = axes.yaxis if which == "y" else axes.xaxis
    lo, hi = sorted(axes.get_ylim() if which == "y" else axes.get_xlim())
    ticks: list[float] = []
    if lo > 0:
        span = math.log10(hi / lo)
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for steps in _LOG_STEPS:
            ticks = [m * 10.0**e for e in decades for m in steps if lo <= m * 10.0**e <= hi]
            # Enough ticks, and none of the axis's ends left unlabelled for long.
            if len(ticks) >= 3 and max(math.log10(ticks[0] / lo), math.log10(hi / ticks[-1])) <= 0.25 * span:
                break
        if len(ticks) < 3:
            ticks = [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
        ticks = _spaced(axes, which, ticks, lo, hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.10g}"))
    axis.set_minor_formatter(NullFormatter())


def _spaced(axes, which: str, ticks: list[float], lo: float, hi: float) -> list[float]:
    """`ticks` less those whose label would touch the previous one kept, on a log axis from `lo` to
    `hi` as long as `axes` is drawn (labels along x are as wide as their digits, along y one line
    high), so that 80, 90 and 100 on a short axis do not run into each other."""
    from matplotlib.font_manager import FontProperties

    plt = _pyplot()
    size = FontProperties(size=plt.rcParams[f"{which}tick.labelsize"]).get_size_in_points()
    box = axes.get_position()
    width, height = axes.figure.get_size_inches() * 72
    length = (box.height * height if which == "y" else box.width * width) / math.log10(hi / lo)
    kept: list[float] = []
    for tick in ticks:
        if kept:
            needed = (
                size * 1.4 if which == "y" else size * 0.6 * (len(f"{tick:.10g}") + len(f"{kept[-1]:.10g}")) / 2 + size
            )
            if math.log10(tick / kept[-1]) * length < needed:
                continue
        kept.append(tick)
    return kept


def _colours() -> list[str]:
    return _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]


def latency_vs_cut_figure(
    model: str, predictions: dict[str, dict[str, Any]], cells: list[dict], records: Sequence[RequestRecord]
):
    from matplotlib.lines import Line2D

    plt = _pyplot()
    codecs = sorted({codec for per_codec in predictions.values() for codec in per_codec})
    figure, axes = plt.subplots(1, len(codecs), figsize=(7 * len(codecs), 4.5), squeeze=False)
    colours = _colours()
    policies = list(dict.fromkeys(c["policy"] for c in cells))
    markers = {p: _POLICY_MARKERS[i % len(_POLICY_MARKERS)] for i, p in enumerate(policies)}
    # Medians of several policies at one cut are set side by side, _DODGE ops apart, not on top
    # of each other.
    dodge = {p: (i - (len(policies) - 1) / 2) * _DODGE for i, p in enumerate(policies)}
    for ax, codec in zip(axes[0], codecs):
        handles = []
        for i, (condition, per_codec) in enumerate(predictions.items()):
            if codec not in per_codec:
                continue
            colour = colours[i % len(colours)]
            curve = per_codec[codec]
            x, y = np.array(curve["head_size"]), np.array(curve["predicted_ms"])
            order = np.argsort(x, kind="stable")
            ax.plot(x[order], y[order], color=colour, linewidth=1)
            handles.append(Line2D([], [], color=colour, linewidth=1, label=f"{condition}: predicted, every cut"))
            best = int(np.argmin(y))
            ax.plot(
                x[best], y[best], marker="*", markersize=14, color=colour, markeredgecolor="black", linestyle="none"
            )
            for cell in (c for c in cells if c["condition"] == condition and c["codec"] == codec):
                group = [
                    r for r in ok(records) if (r.policy, r.codec, r.condition) == (cell["policy"], codec, condition)
                ]
                if group:
                    ax.plot(
                        _cut_position(cell, group) + dodge[cell["policy"]],
                        float(np.median([r.total_ms for r in group])),
                        marker=markers[cell["policy"]],
                        markersize=7,
                        color=colour,
                        markeredgecolor="black",
                        linestyle="none",
                    )
        # One entry per marker shape (in grey: the colour is the condition's, named above).
        handles.append(_marker_handle("*", "predicted best cut", markersize=14))
        for policy in policies:
            what = "at its most-run cut" if split_race(policy)[0] == ADAPTIVE else "at its cut"
            handles.append(_marker_handle(markers[policy], f"{policy}: measured median {what}"))
        ax.set_yscale("log")
        ax.set_xlabel("ops on the device (cut position)")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_title(f"{model}, {codec}: latency of every cut")
        ax.grid(True, which="both", alpha=0.3)
        _legend_beside(ax, handles=handles, fontsize=8)
    figure.tight_layout()
    # After the layout: how many ticks fit depends on the axes' final length.
    for ax in axes[0]:
        plain_log_ticks(ax, "y")
    return figure


def _legend_beside(axes, **options) -> None:
    """The legend to the right of `axes`, off the data; outside the layout, so that the axes keep
    their width and the saved image grows to hold it (bbox_inches="tight")."""
    legend = axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), **options)
    legend.set_in_layout(False)


def _marker_handle(marker: str, label: str, markersize: float = 7):
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        marker=marker,
        markersize=markersize,
        color="0.6",
        markeredgecolor="black",
        linestyle="none",
        label=label,
    )


def _cut_position(cell: dict, group: Sequence[RequestRecord]) -> int:
    """Where a cell's median goes on the cut axis: its cut, or the cut most of its requests ran."""
    if cell["head_size"] >= 0:
        return cell["head_size"]
    return Counter(r.head_size for r in group).most_common(1)[0][0]


def timeline_figure(model: str, condition: str, cells: list[dict], records: Sequence[RequestRecord]):
    plt = _pyplot()
    mine = [c for c in cells if c["condition"] == condition]
    figure, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]}
    )
    colours = _colours()
    series = max((c["rate_series"] for c in mine), key=len, default=[])
    rate_top = _RATE_HEADROOM * max((rate for _, rate in series), default=0.0)
    for i, cell in enumerate(mine):
        colour = colours[i % len(colours)]
        group = [
            r for r in ok(records) if (r.policy, r.codec, r.condition) == (cell["policy"], cell["codec"], condition)
        ]
        label = f"{cell['policy']} / {cell['codec']}: {_what_ran(cell, group)}"
        top.plot(
            [r.t_s for r in group],
            [r.total_ms for r in group],
            marker=".",
            markersize=4,
            linewidth=0.6,
            color=colour,
            label=label,
        )
        middle.step(
            [r.t_s for r in group],
            [r.head_size for r in group],
            where="post",
            color=colour,
            linewidth=1,
            label=cell["policy"],
        )
        _plot_estimate(bottom, cell, group, colour, rate_top)
    if series:
        t, rate = zip(*series)
        bottom.step(t, rate, where="post", color="black", linewidth=0.8, label="trace uplink rate (1 s mean)")
    if rate_top > 0:
        bottom.set_ylim(0.0, rate_top)
    top.set_ylabel("latency, ms")
    top.set_yscale("log")
    top.set_title(f"{model} on {condition}: latency over time, the cut each request ran, the link")
    top.grid(True, which="both", alpha=0.3)
    middle.set_ylabel("cut: ops on device")
    middle.grid(True, alpha=0.3)
    bottom.set_ylabel("uplink, Mbit/s")
    bottom.set_xlabel("time since the trace started, s")
    bottom.grid(True, alpha=0.3)
    for ax in (top, middle, bottom):
        if ax.get_legend_handles_labels()[0]:
            _legend_beside(ax, fontsize=7)
    figure.tight_layout()
    plain_log_ticks(top, "y")
    return figure


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


def _plot_estimate(axes, cell: dict, group: Sequence[RequestRecord], colour: str, rate_top: float) -> None:
    """An adaptive cell's bandwidth estimate over time, clipped to the rate axis (`rate_top`):
    the estimates beyond it are marked on the axis's top edge and counted in the legend."""
    estimates = [(r.t_s, r.estimate_mbps) for r in group if not math.isnan(r.estimate_mbps)]
    if not estimates:
        return
    t, value = (np.array(v) for v in zip(*estimates))
    above = value > rate_top if rate_top > 0 else np.zeros(len(value), bool)
    axes.plot(
        t,
        np.minimum(value, rate_top) if rate_top > 0 else value,
        linestyle="--",
        linewidth=0.9,
        color=colour,
        label=f"{cell['policy']}: its bandwidth estimate",
    )
    if above.any():
        axes.plot(
            t[above],
            np.full(int(above.sum()), rate_top),
            marker="^",
            markersize=5,
            color=colour,
            linestyle="none",
            clip_on=False,
            label=f"{cell['policy']}: estimate above the axis ({int(above.sum())} of {len(value)}, "
            f"up to {value.max():.3g} Mbit/s)",
        )


def cdf_figure(model: str, conditions: list[str], records: Sequence[RequestRecord]):
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
        if mine:
            ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(conditions) :]:
        ax.set_visible(False)
    figure.tight_layout()
    for ax in list(axes.flat)[: len(conditions)]:
        if ax.lines:
            plain_log_ticks(ax, "x")
    return figure
