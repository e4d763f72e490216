"""What an experiment run was, for meta.json: the machine (CPUs usable, host), the versions of the
packages that ran, the git commit and whether the tree was dirty, the emulated device, each network
condition as configured (a trace file's mean rate and length included), and per cell the stretch of
link it replayed with its mean rate, and per trace cell the uplink rate over its time, so that a
timeline is re-plotted from the results alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiment.conditions import Condition
from experiment.config import ExperimentConfig
from experiment.device import DeviceSetup
from experiment.results import RequestRecord

# Spacing of the trace rate samples meta.json keeps for the timeline plots.
_RATE_SAMPLE_S = 0.25
_VERSIONED = ("splitinfer", "numpy", "onnxruntime", "grpcio", "protobuf", "zstandard", "torch", "onnx", "matplotlib")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_meta(config: ExperimentConfig, device: DeviceSetup) -> dict[str, Any]:
    """meta.json as it starts: everything but the models, the cells and the finishing time."""
    return {
        "seed": config.seed,
        "started": now(),
        "machine": _machine(),
        "versions": _versions(),
        "git": _git(),
        "device": dataclasses.asdict(device),
        "requests_per_cell": config.requests,
        "seconds_per_cell": config.seconds,
        "warmup_requests": config.warmup_requests,
        "oracle": "per request, predicted: the best of the adaptive bundle's (cut, codec) choices on the link it met",
        "bound": "per request, predicted: the best of every cut of the profile on the link it met",
        "planner": "per cell, predicted: the planner's cut at the mean rate of the link stretch the cell replayed",
        "conditions": [_condition_meta(c) for c in config.conditions],
        "models": {},
        "cells": [],
    }


def _condition_meta(condition: Condition) -> dict[str, Any]:
    down_mbps = condition.down_bps / 1e6 if condition.down_bps else None
    data: dict[str, Any] = {"name": condition.name, "rtt_ms": condition.rtt_ms, "down_mbps": down_mbps}
    data.update(loss=condition.loss, backend=condition.backend)
    if condition.trace is None:
        data["rate_mbps"] = (condition.rate_bps or 0.0) / 1e6
    else:
        from netemu.traces import load_trace

        trace = load_trace(condition.trace)
        # The whole file's: a cell replays a stretch of it (its `replayed` says which, and its rate).
        data.update(trace=str(condition.trace), trace_file_mean_mbps=trace.mean_rate_bps / 1e6)
        data.update(trace_file_duration_s=trace.duration_s)
    return data


def rate_series(condition: Condition, records: list[RequestRecord]) -> list[list[float]]:
    """The uplink rate over the cell's time (trace conditions), for re-plotting without the trace."""
    if condition.trace is None or not records:
        return []
    from netemu.traces import load_trace

    trace = load_trace(condition.trace)
    longest_ms = max((r.total_ms for r in records if not math.isnan(r.total_ms)), default=0.0)
    end = max(r.t_s for r in records) + longest_ms / 1e3
    times = np.arange(0.0, end + _RATE_SAMPLE_S, _RATE_SAMPLE_S)
    return [[round(float(t), 3), trace.rate_bps_at(float(t), 1.0) / 1e6] for t in times]


def replayed_window(condition: Condition, records: list[RequestRecord]) -> dict[str, Any]:
    """The stretch of link a cell's recorded requests met: from the first one's start to the last
    one's end, in link time (a trace's time: its warm-up requests ran before the start), the trace
    periods it spans (more than 1: the trace repeated), and the mean rate the link offered over it
    (a trace's bytes in that stretch over its length; a fixed rate's own)."""
    done = [r for r in records if not math.isnan(r.total_ms)]
    start = min((r.t_s for r in records), default=0.0)
    end = max((r.t_s + r.total_ms / 1e3 for r in done), default=start)
    window: dict[str, Any] = {"start_s": start, "duration_s": end - start}
    if condition.trace is None:
        return {**window, "mean_rate_mbps": (condition.rate_bps or 0.0) / 1e6}
    from netemu.traces import load_trace

    trace = load_trace(condition.trace)
    rate_bps = trace.bytes_between(start, end) * 8 / (end - start) if end > start else trace.rate_bps_at(start)
    return {**window, "mean_rate_mbps": rate_bps / 1e6, "trace_periods": end / trace.duration_s}


def _machine() -> dict[str, Any]:
    from protos.device_profile import machine_facts

    facts: dict[str, Any] = dict(machine_facts())
    facts["cpus_usable"] = sorted(os.sched_getaffinity(0))
    facts["hostname"] = platform.node()
    return facts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _git() -> dict[str, Any]:
    """The commit the code ran from, and whether the working tree differed from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"commit": None, "why": str(err)}
    if commit.returncode != 0:
        return {"commit": None, "why": commit.stderr.strip()}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
