"""The experiment's figures read back from their matplotlib Figures: log axes ticked at plain
numbers whose labels do not touch, a legend entry for every marker series, and an estimate spike
that leaves a slow trace readable."""

from __future__ import annotations

import re

import numpy as np
import pytest

from experiment.plots import cdf_figure, draw_all, latency_vs_cut_figure, plain_log_ticks, timeline_figure
from experiment.results import RequestRecord

pytest.importorskip("matplotlib")

MODEL, CODEC = "mobilenet_v2_035@96x96", "int8+zstd"
PLAIN = re.compile(r"^\d+(\.\d+)?$")


def _record(policy: str, condition: str, i: int, total_ms: float, cut: str, head_size: int, **extra) -> RequestRecord:
    return RequestRecord(
        t_s=0.1 * i, unix_time=0.0, model=MODEL, policy=policy, codec=CODEC, condition=condition, cut=cut,
        head_size=head_size, request=i, sample="s", bytes_sent=0, request_bytes=0, response_bytes=0, head_ms=1.0,
        encode_ms=0.0, network_ms=0.0, decode_ms=0.0, tail_ms=0.0, total_ms=total_ms, agree=True, rate_mbps=1.0,
        predicted_ms=total_ms, **extra,
    )  # fmt: skip


def _experiment() -> tuple[list[RequestRecord], dict]:
    """Two conditions: on "slow" (a 1 Mbit/s trace) latencies between 24 and 30 ms, the adaptive
    cell switching and once estimating 29 Mbit/s; on "wide" from 20 ms to 4 s."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(200):
        cut, size = ("output", 100) if i % 50 < 30 else ("features.3", 12)
        estimate = 29.0 if i == 120 else 0.6 + 0.4 * rng.random()
        records.append(_record("adaptive", "slow", i, 24 + 6 * rng.random(), cut, size, estimate_mbps=estimate))
        records.append(_record("best-static", "slow", i, 24 + 5 * rng.random(), "output", 100))
        records.append(_record("best-static", "wide", i, float(20 * 200 ** rng.random()), "features.3", 12))
    series = [[0.25 * k, 0.5 + 0.5 * (k % 8) / 7] for k in range(90)]
    cells = [
        dict(model=MODEL, policy=policy, codec=CODEC, condition=condition, cut=cut, head_size=size,
             rate_series=series, switches=6 if policy == "adaptive" else 0)
        for policy, condition, cut, size in (
            ("adaptive", "slow", "adaptive", -1), ("best-static", "slow", "output", 100),
            ("best-static", "wide", "features.3", 12),
        )
    ]  # fmt: skip
    sizes = list(range(0, 101, 4))
    predictions = {
        condition: {CODEC: {"cut": [f"c{s}" for s in sizes], "head_size": sizes, "predicted_ms": curve}}
        for condition, curve in (
            ("slow", [float(40 + 400 / (1 + s)) for s in sizes]),
            ("wide", [float(25 + 3000 / (1 + s)) for s in sizes]),
        )
    }
    conditions = [{"name": "slow", "trace": "slow.up"}, {"name": "wide", "trace": "wide.up"}]
    meta = {"models": {MODEL: {"predictions": predictions}}, "cells": cells, "conditions": conditions}
    return records, meta


@pytest.fixture(scope="module")
def figures():
    records, meta = _experiment()
    cells, predictions = meta["cells"], meta["models"][MODEL]["predictions"]
    built = {
        "latency_vs_cut": latency_vs_cut_figure(MODEL, predictions, cells, records),
        "timeline_slow": timeline_figure(MODEL, "slow", cells, records),
        "timeline_wide": timeline_figure(MODEL, "wide", cells, records),
        "cdf": cdf_figure(MODEL, ["slow", "wide"], records),
    }
    for figure in built.values():
        figure.canvas.draw()
    yield built
    import matplotlib.pyplot as plt

    for figure in built.values():
        plt.close(figure)


def _log_axes(figure):
    for ax in figure.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log" and ax.get_visible():
                yield ax, axis


def test_log_axes_are_ticked_at_plain_numbers_whose_labels_do_not_touch(figures) -> None:
    checked = 0
    for name, figure in figures.items():
        renderer = figure.canvas.get_renderer()
        for ax, axis in _log_axes(figure):
            lo, hi = sorted(ax.get_ylim() if axis is ax.yaxis else ax.get_xlim())
            labels = [
                t for t in axis.get_ticklabels() if t.get_text() and lo <= t.get_position()[axis is ax.yaxis] <= hi
            ]
            texts = [t.get_text() for t in labels]
            assert len(texts) >= 2, (name, texts)
            assert all(PLAIN.match(text) for text in texts), (name, texts)
            assert not [t.get_text() for t in axis.get_minorticklabels() if t.get_text()], name
            boxes = [t.get_window_extent(renderer) for t in labels]
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), (name, texts)
            checked += 1
    # latency vs cut (y), the two timelines' latency (y), the two CDF panels (x).
    assert checked == 5


def test_a_range_too_narrow_for_the_digits_still_gets_plain_ticks() -> None:
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4, 3))
    ax.plot([24.0, 29.5], [0, 1])
    ax.set_xscale("log")
    ax.set_xlim(24.0, 29.5)
    plain_log_ticks(ax, "x")
    figure.canvas.draw()
    texts = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(figure)
    assert len(texts) >= 2 and all(PLAIN.match(t) for t in texts), texts


def _marker_series(ax):
    return [line for line in ax.lines if line.get_marker() not in (None, "", "None", " ", "none")]


def test_every_marker_series_has_a_legend_entry(figures) -> None:
    for name, figure in figures.items():
        for ax in figure.axes:
            series = _marker_series(ax)
            if not series:
                continue
            legend = ax.get_legend()
            assert legend is not None, name
            handles = legend.legend_handles
            markers = {h.get_marker() for h in handles if hasattr(h, "get_marker")}
            for line in series:
                assert line.get_marker() in markers, (name, line.get_marker(), line.get_label())
                if name.startswith("timeline"):
                    assert line.get_label() in [t.get_text() for t in legend.get_texts()], (name, line.get_label())
    # latency vs cut: the colour of a marker is a condition named by a line in the legend.
    (ax,) = figures["latency_vs_cut"].axes
    legend = ax.get_legend()
    named = {h.get_color(): t.get_text() for h, t in zip(legend.legend_handles, legend.get_texts())}
    for line in _marker_series(ax):
        assert named.get(line.get_color(), "").endswith("predicted, every cut"), line.get_color()
    policies = [t.get_text() for t in legend.get_texts()]
    assert any(t.startswith("adaptive: measured median") for t in policies)
    assert any(t.startswith("best-static: measured median") for t in policies)


def test_an_estimate_spike_does_not_flatten_a_slow_trace(figures) -> None:
    rate_axes = figures["timeline_slow"].axes[2]
    bottom, top = rate_axes.get_ylim()
    # The trace reaches 1 Mbit/s; the 29 Mbit/s estimate does not stretch the axis.
    assert bottom == 0.0 and top == pytest.approx(1.15)
    (spike,) = [line for line in rate_axes.lines if line.get_marker() == "^"]
    assert list(spike.get_ydata()) == [pytest.approx(1.15)]
    assert "above the axis (1 of 200, up to 29 Mbit/s)" in spike.get_label()


def test_draw_all_saves_every_figure(tmp_path) -> None:
    records, meta = _experiment()
    paths = draw_all(records, meta, tmp_path)
    assert {p.name for p in paths} >= {f"cdf_{MODEL.replace('@', '_')}.png", "timeline_mobilenet_v2_035_96x96_slow.svg"}
    assert all(p.stat().st_size > 0 for p in paths)
