"""`run_experiment(config)`: every cell of the grid, for real, one request at a time.

For each model: build it, profile every cut once (few repeats: the profile plans, the run
measures), and predict every cut's latency at every condition (experiment.prepare). For each
(policy, codec, condition) cell: plan with the profile → export the chosen cut's bundle (cached per
cut and codec) → start the server in its own process, pinned → put a netemu link (the condition's
backend) between client and server shaped to the condition → run the real EdgeClient on the
evaluation photos, recording every request (experiment.measure). meta.json records what the run was
(experiment.provenance) and, per cell, its plan and its oracle.

Policy "adaptive" exports one multi-cut bundle (the cuts the planner chooses somewhere between a
CAT1 and a fast Wi-Fi uplink, with the decision table), serves all its tails from one server and
lets the edge runtime choose the cut before each request; "best-static" runs the cut with the
lowest predicted mean over the cell's link (experiment.oracle). A policy ending in "+race" runs
the same way, with the client racing the server with the rest of the model on the device.

Three predicted figures stand beside the measured ones (predicted: measuring every cut of every
cell would take hours), each under its own name:
- per request, `oracle_ms`: the best any of the adaptive bundle's (cut, codec) choices could have
  done on the link that request met (experiment.oracle), the bar the adaptive runtime is measured
  against;
- per request, `bound_ms`: the same over every cut of the profile, out of reach of the bundle;
- per cell, `planner_ms`: the planner's cut (neurosurgeon, under the cell's codec and constraints)
  at the mean rate of the stretch of link the cell replayed (`replayed` in meta.json: its start,
  duration and mean rate).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiment.config import ExperimentConfig, split_race
from experiment.device import DeviceSetup, device_setup
from experiment.grid import Cell, cells, constraints_for, link_model, planning_network
from experiment.measure import measure
from experiment.prepare import CellRun, PreparedModel, adaptive_decisions, cell_codecs, plan_cell, prepare_model
from experiment.provenance import now, rate_series, replayed_window, run_meta
from experiment.results import (
    META_JSON,
    RESULTS_CSV,
    RESULTS_PARQUET,
    RequestRecord,
    ResultsWriter,
    read_results,
    write_parquet,
)
from protos.errors import SplitInferError


def run_experiment(config: ExperimentConfig, *, out: Path | None = None, console: Console | None = None) -> Path:
    """Runs every cell; returns the results directory (results.csv, meta.json, config.toml)."""
    from cloud_runtime.process import split_cpus

    out_dir = out or config.out
    cpus = split_cpus() if config.device.pin else (set(os.sched_getaffinity(0)),) * 2
    device = device_setup(config.device, cpus)
    racing = [p for p in config.policies if split_race(p)[1]]
    if racing and device.method == "cgroup":
        raise SplitInferError(
            f"policies {racing} race the server with a second device thread, which the cgroup quota does not "
            "slow: set device.pace = true instead of device.cgroup"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config.source, out_dir / "config.toml")
    meta = run_meta(config, device)
    writer = ResultsWriter(out_dir / RESULTS_CSV)
    try:
        _run_grid(config, device, out_dir, meta, writer, console or Console())
    finally:
        writer.close()
        if config.parquet:
            write_parquet(read_results(out_dir / RESULTS_CSV), out_dir / RESULTS_PARQUET)
        meta["finished"] = now()
        (out_dir / META_JSON).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out_dir


def _run_grid(
    config: ExperimentConfig,
    device: DeviceSetup,
    out_dir: Path,
    meta: dict[str, Any],
    writer: ResultsWriter,
    console: Console,
) -> None:
    """Each model prepared once, then its cells, with a progress bar over every request (or second)."""
    grid = cells(config)
    units = config.requests if config.requests is not None else config.seconds
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("experiment", total=len(grid) * units)
        for model in config.models:
            progress.update(task, description=f"{model.label}: profiling")
            state = prepare_model(model, config, device, out_dir)
            meta["models"][model.label] = state.meta
            for cell in (c for c in grid if c.model == model):
                where = f"{model.label} · {cell.policy} · {cell.codec} · {cell.condition.name}"
                progress.update(task, description=where)
                advance = lambda n: progress.advance(task, n)  # noqa: E731
                records, cell_meta = _run_cell(cell, state, config, device, out_dir, advance)
                for record in records:
                    writer.write(record)
                meta["cells"].append(cell_meta)


def _run_cell(
    cell: Cell, state: PreparedModel, config: ExperimentConfig, device: DeviceSetup, out_dir: Path, advance
) -> tuple[list[RequestRecord], dict[str, Any]]:
    from experiment.oracle import Oracles, options

    constraints = constraints_for(config, split_race(cell.policy)[0])
    link = link_model(cell.condition)
    codecs = cell_codecs(cell, state)
    choices = options(state.profile, codecs, allow_raw_input=constraints.allow_raw_input)
    run, extra = plan_cell(cell, state, config, link, choices, out_dir)
    # Every cell's requests are priced against the adaptive bundle's choices, whatever the
    # cell's policy, so that its row reads against the same oracle as the adaptive cell's.
    adaptive = adaptive_decisions(state, config, codecs, cell.condition.rtt_ms)
    carried = {c.key for c in adaptive.choices}
    oracles = Oracles([o for o in choices if o.key in carried], choices)
    records = measure(cell, run, state, config, device, link, oracles, advance)
    meta = _cell_meta(cell, run, state, config, records)
    return records, {**meta, "oracle_choices": sorted(f"{cut} {codec}" for cut, codec in carried), **extra}


def _cell_meta(
    cell: Cell, run: CellRun, state: PreparedModel, config: ExperimentConfig, records: list[RequestRecord]
) -> dict[str, Any]:
    """What meta.json says of a cell: its plan, the stretch of link its requests replayed and its
    mean rate there, the planner's cut at that rate, its trace's rate over time, and how often the
    cut switched."""
    from splitter.cost.network import NetworkModel
    from splitter.cost.plan import plan

    network = planning_network(cell.condition)
    replayed = replayed_window(cell.condition, records)
    at_mean = NetworkModel(replayed["mean_rate_mbps"] * 1e6, cell.condition.rtt_ms, cell.condition.name)
    constraints = constraints_for(config, split_race(cell.policy)[0])
    planner = plan(state.profile, at_mean, codec=cell.codec, policy="neurosurgeon", constraints=constraints).chosen
    cuts = [r.cut for r in records if r.cut]
    return {
        "model": cell.model.label,
        "policy": cell.policy,
        "codec": cell.codec,
        "condition": cell.condition.name,
        "cut": run.cut,
        "head_size": run.head_size,
        "wire_codec": run.codec,
        "planned_rate_mbps": network.bandwidth_bps / 1e6,
        "predicted_ms": run.predicted_ms,
        "replayed": replayed,
        "mean_rate_mbps": replayed["mean_rate_mbps"],
        "planner_cut": planner.name,
        "planner_codec": planner.codec,
        "planner_ms": planner.total_ms,
        "rate_series": rate_series(cell.condition, records),
        "switches": sum(1 for a, b in zip(cuts, cuts[1:], strict=False) if a != b),
    }
