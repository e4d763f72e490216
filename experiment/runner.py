"""`run_experiment(config)`: every cell of the grid, for real, one request at a time.

For each model: build it, profile every cut once (few repeats: the profile plans, the run
measures), and predict every cut's latency at every condition. For each (policy, codec, condition)
cell: plan with the profile → export the chosen cut's bundle (cached per cut and codec) → start the
server in its own process, pinned → put a netemu link (the condition's backend) between client and
server shaped to the condition → run the real EdgeClient on the evaluation photos, recording every
request.

Policy "adaptive" exports one multi-cut bundle (the cuts the planner chooses somewhere between a
CAT1 and a fast Wi-Fi uplink, with the decision table), serves all its tails from one server and
lets the edge runtime choose the cut before each request; "best-static" runs the cut with the
lowest predicted mean over the cell's link (experiment.oracle). A policy ending in "+race" runs
the same way, with the client racing the server with the rest of the model on the device.

The oracle is predicted, not measured: measuring every cut of every cell would take hours. Per
cell, it is the planner's best cut (neurosurgeon, under the cell's codec and constraints) at the
mean uplink rate the cell's requests actually met; summary tables call it "predicted oracle".
Per request, `oracle_ms` is the best any cut could have done on the link that request met
(experiment.oracle), the bar the adaptive runtime is measured against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from experiment.config import ADAPTIVE, BEST_STATIC, Condition, ExperimentConfig, ModelSpec, split_race
from experiment.device import (
    DeviceSetup,
    PacedEncoder,
    PacedHead,
    PacedLocalTail,
    StretchedHead,
    StretchedLocalTail,
    cgroup_quota,
    cgroup_unavailable_reason,
)
from experiment.results import META_JSON, RESULTS_CSV, RESULTS_PARQUET, RequestRecord, ResultsWriter, read_results, write_parquet
from protos.errors import SplitInferError

# The codec an all-on-device bundle is exported with when the cell's codec is `auto` (nothing
# crosses, so it never matters).
_EDGE_ONLY_CODEC = "int8+zstd"
# A request may wait this long for its answer: a raw image at CAT1's 0.13 Mbit/s takes ~40 s.
_REQUEST_TIMEOUT_S = 300.0
# Spacing of the trace rate samples meta.json keeps for the timeline plots.
_RATE_SAMPLE_S = 0.25


@dataclasses.dataclass(frozen=True)
class Cell:
    model: ModelSpec
    policy: str
    codec: str
    condition: Condition


def cells(config: ExperimentConfig) -> list[Cell]:
    return [
        Cell(model, policy, codec, condition)
        for model, policy, codec, condition in product(config.models, config.policies, config.codecs, config.conditions)
    ]


def planning_network(condition: Condition):
    """The NetworkModel a plan is made for: the fixed rate, or a trace's mean rate."""
    from netemu.traces import load_trace
    from splitter.cost.network import NetworkModel

    rate = condition.rate_bps if condition.trace is None else load_trace(condition.trace).mean_rate_bps
    return NetworkModel(rate, condition.rtt_ms, condition.name)


def constraints_for(config: ExperimentConfig, policy: str):
    """cloud-only is the baseline that sends the raw input: it always may; the others as configured."""
    from splitter.policies import Constraints

    return Constraints(allow_raw_input=config.allow_raw_input or policy == "cloud-only")


def run_experiment(config: ExperimentConfig, *, out: Path | None = None, console: Console | None = None) -> Path:
    """Runs every cell; returns the results directory (results.csv, meta.json, config.toml)."""
    from cloud_runtime.process import split_cpus

    console = console or Console()
    out_dir = out or config.out
    device = _device_setup(config, split_cpus() if config.device.pin else (set(os.sched_getaffinity(0)),) * 2)
    racing = [p for p in config.policies if split_race(p)[1]]
    if racing and device.method == "cgroup":
        raise SplitInferError(f"policies {racing} race the server with a second device thread, which the cgroup quota does not slow: set device.pace = true instead of device.cgroup")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config.source, out_dir / "config.toml")
    grid = cells(config)
    meta: dict[str, Any] = {
        "seed": config.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "versions": _versions(),
        "git": _git(),
        "device": dataclasses.asdict(device),
        "requests_per_cell": config.requests,
        "seconds_per_cell": config.seconds,
        "warmup_requests": config.warmup_requests,
        "oracle": "predicted: the planner's best cut at the mean uplink rate a cell's requests met",
        "conditions": [_condition_meta(c) for c in config.conditions],
        "models": {},
        "cells": [],
    }
    writer = ResultsWriter(out_dir / RESULTS_CSV)
    units = config.requests if config.requests is not None else config.seconds
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as progress:  # fmt: skip
            task = progress.add_task("experiment", total=len(grid) * units)
            for model in config.models:
                progress.update(task, description=f"{model.label}: profiling")
                state = _prepare_model(model, config, device, out_dir)
                meta["models"][model.label] = state.meta
                for cell in (c for c in grid if c.model == model):
                    progress.update(task, description=f"{model.label} · {cell.policy} · {cell.codec} · {cell.condition.name}")
                    records, cell_meta = _run_cell(cell, state, config, device, out_dir, lambda n: progress.advance(task, n))
                    for record in records:
                        writer.write(record)
                    meta["cells"].append(cell_meta)
    finally:
        writer.close()
        if config.parquet:
            write_parquet(read_results(out_dir / RESULTS_CSV), out_dir / RESULTS_PARQUET)
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (out_dir / META_JSON).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out_dir


@dataclasses.dataclass(frozen=True)
class _ModelState:
    source: Any  # splitter.sources.ModelSource
    profile: Any  # splitter.profile.schema.Profile
    cuts: list
    samples: list[tuple[str, dict[str, np.ndarray]]]
    reference_top1: dict[str, int]
    bundles: dict[tuple, Any]  # (cut, codec) → Bundle, (codecs, rtt) → MultiCutBundle, filled as cells need them
    meta: dict[str, Any]


def _prepare_model(model: ModelSpec, config: ExperimentConfig, device: DeviceSetup, out_dir: Path) -> _ModelState:
    from splitter.accuracy.evaluate import evaluation_for
    from splitter.pipeline import model_cuts, profile_source
    from splitter.cost.plan import cost_table
    from splitter.profile.timing import ProfileSettings, session
    from splitter.sources import load_source

    source = load_source(model.name, input_shape=model.input_shape, seed=config.seed)
    settings = ProfileSettings(
        edge_threads=device.threads,
        server_threads=len(device.server_cpus),
        repeats=config.profile_repeats,
        warmup=1,
        edge_slowdown=device.slowdown,
    )
    if "auto" not in config.codecs:
        # Measuring the codecs no cell uses would only make profiling slower.
        settings = dataclasses.replace(settings, codecs=config.codecs)
    profile = profile_source(source, settings, per_op=False)
    (out_dir / "profiles").mkdir(exist_ok=True)
    profile.save(out_dir / "profiles" / f"{_slug(model.label)}.json")
    # Requests cycle over the evaluation samples (a registered model's 64 photos and views of
    # them); a model without a task metric gets its four default inputs (photos or random tensors).
    evaluation = evaluation_for(source, model.samples, model.metric)
    samples = evaluation.named() if evaluation is not None else source.samples(4)
    described = evaluation.samples.evaluation.description if evaluation is not None else f"{len(samples)} default inputs ({', '.join(n for n, _ in samples)})"
    reference = session(source.model, threads=1)
    top1 = {name: int(np.argmax(reference.run(None, feed)[0])) for name, feed in samples}
    predictions: dict[str, dict[str, Any]] = {}
    for condition, codec in product(config.conditions, config.codecs):
        table = cost_table(profile, planning_network(condition), codec)
        best: dict[str, Any] = {}
        for cost in table.cuts:
            if cost.name not in best or cost.total_ms < best[cost.name].total_ms:
                best[cost.name] = cost
        predictions.setdefault(condition.name, {})[codec] = {
            "cut": list(best), "head_size": [c.head_size for c in best.values()], "predicted_ms": [c.total_ms for c in best.values()],
        }  # fmt: skip
    meta = {
        "model_id": source.model_id, "input_shapes": source.input_shapes, "cuts": len(profile.cuts), "predictions": predictions,
        "samples": described,
    }  # fmt: skip
    return _ModelState(source, profile, model_cuts(source, include_input=True), samples, top1, {}, meta)


def _bundle(state: _ModelState, cut: str, codec: str, out_dir: Path):
    from splitter.graph.cuts import find_cut
    from splitter.export.bundle import export_bundle

    key = (cut, codec)
    if key not in state.bundles:
        where = out_dir / "bundles" / _slug(state.source.model_id) / _slug(f"{cut}-{codec}")
        # The experiment measures agreement itself, per request: a codec that changes a top-1 is
        # a result to record, not a reason to drop the cell. head∘tail in fp32 is still checked.
        state.bundles[key], _ = export_bundle(source=state.source, cut=find_cut(state.cuts, cut), out_dir=where, samples=state.samples, codec=codec, min_agreement=0.0)
    return state.bundles[key]


def _cell_codecs(cell: Cell, state: _ModelState) -> list[str]:
    """The codecs a cell may send with: its own, or every profiled one for `auto`."""
    from splitter.cost.plan import AUTO_CODEC

    if cell.codec != AUTO_CODEC:
        return [cell.codec]
    return sorted({name for cut in state.profile.cuts for name in cut.codecs})


def _multi_bundle(state: _ModelState, codecs: list[str], rtt_ms: float, constraints, out_dir: Path):
    from splitter.export.adaptive import candidate_cuts, decision_table
    from splitter.graph.cuts import find_cut
    from splitter.export.bundle import export_multi_cut

    key = ("adaptive", tuple(codecs), rtt_ms)
    if key not in state.bundles:
        names = candidate_cuts(state.profile, rtt_ms, codecs, constraints=constraints)
        decisions = decision_table(state.profile, names, codecs, rtt_ms=rtt_ms, constraints=constraints)
        where = out_dir / "bundles" / _slug(state.source.model_id) / _slug(f"adaptive-{'-'.join(codecs)}-{rtt_ms:g}ms")
        state.bundles[key], _ = export_multi_cut(
            state.source, [find_cut(state.cuts, n) for n in names], where, state.samples, decisions, min_agreement=0.0
        )
    return state.bundles[key]


def _link_model(condition: Condition):
    from experiment.oracle import Link
    from netemu.traces import load_trace

    return Link(condition.rtt_ms, condition.rate_bps, load_trace(condition.trace) if condition.trace is not None else None)


def _run_cell(cell: Cell, state: _ModelState, config: ExperimentConfig, device: DeviceSetup, out_dir: Path, advance) -> tuple[list[RequestRecord], dict[str, Any]]:
    from experiment.oracle import best_static, options, whole_model_ms
    from splitter.cost.network import NetworkModel
    from splitter.cost.plan import plan

    network = planning_network(cell.condition)
    policy, race = split_race(cell.policy)
    constraints = constraints_for(config, policy)
    link = _link_model(cell.condition)
    choices = options(state.profile, _cell_codecs(cell, state), allow_raw_input=constraints.allow_raw_input)
    cell_meta: dict[str, Any] = {"race": race}
    if policy == ADAPTIVE:
        multi = _multi_bundle(state, _cell_codecs(cell, state), cell.condition.rtt_ms, constraints, out_dir)
        run = _Run(multi.path, any(v.manifest.has_tail for v in multi.variants), multi, "adaptive", math.nan, -1, "")
        cell_meta["adaptive"] = {"cuts": [c.cut_name for c in multi.manifest.cuts], "margin": config.adaptive.margin, "confirm": config.adaptive.confirm}
    else:
        if policy == BEST_STATIC:
            duration_s = config.seconds if config.seconds is not None else None
            race_ms = whole_model_ms(choices) if race else None
            best, mean_ms = best_static(choices, link, duration_s if duration_s is not None else _predicted_span_s(choices, link, config), race_ms=race_ms)
            name, codec, predicted = best.cut, best.codec, mean_ms
            head_size = best.head_size
            cell_meta["best_static_predicted_mean_ms"] = mean_ms
        else:
            chosen = plan(state.profile, network, codec=cell.codec, policy=policy, constraints=constraints).chosen
            name, codec, predicted, head_size = chosen.name, chosen.codec, chosen.total_ms, chosen.head_size
        codec = codec if codec != "-" else (cell.codec if cell.codec != "auto" else _EDGE_ONLY_CODEC)
        bundle = _bundle(state, name, codec, out_dir)
        run = _Run(bundle.path, bundle.manifest.has_tail, bundle, name, predicted, head_size, codec)
    records = _measure(cell, run, state, config, device, link, choices, advance)
    met = [r.rate_mbps for r in records if not math.isnan(r.rate_mbps)]
    mean_rate_bps = float(np.mean(met)) * 1e6 if met else network.bandwidth_bps
    at_mean = NetworkModel(mean_rate_bps, cell.condition.rtt_ms, cell.condition.name)
    oracle = plan(state.profile, at_mean, codec=cell.codec, policy="neurosurgeon", constraints=constraints).chosen
    cuts = [r.cut for r in records if r.cut]
    cell_meta = {
        "model": cell.model.label, "policy": cell.policy, "codec": cell.codec, "condition": cell.condition.name,
        "cut": run.cut, "head_size": run.head_size, "wire_codec": run.codec, "planned_rate_mbps": network.bandwidth_bps / 1e6,
        "predicted_ms": run.predicted_ms, "mean_rate_mbps": mean_rate_bps / 1e6,
        "oracle_cut": oracle.name, "oracle_codec": oracle.codec, "oracle_predicted_ms": oracle.total_ms,
        "rate_series": _rate_series(cell.condition, records),
        "switches": sum(1 for a, b in zip(cuts, cuts[1:]) if a != b),
        **cell_meta,
    }  # fmt: skip
    return records, cell_meta


def _predicted_span_s(choices, link, config: ExperimentConfig) -> float:
    """How long `config.requests` requests last at the fastest option (for a closed-loop prediction)."""
    from experiment.oracle import predicted_ms

    return (config.requests or 1) * min(predicted_ms(o, link, 0.0) for o in choices) / 1e3


@dataclasses.dataclass(frozen=True)
class _Run:
    """What a cell runs: the bundle path the server serves, and what the client loads."""

    path: Path
    has_tail: bool
    bundle: Any  # Bundle or MultiCutBundle
    cut: str  # the fixed cut, or "adaptive"
    predicted_ms: float
    head_size: int
    codec: str


def _measure(cell: Cell, run: _Run, state: _ModelState, config: ExperimentConfig, device: DeviceSetup, link_model, choices, advance) -> list[RequestRecord]:
    from cloud_runtime.config import ServerConfig
    from cloud_runtime.process import start_server_process
    from edge_runtime.adaptive import AdaptiveSettings
    from edge_runtime.client import EdgeClient
    from edge_runtime.config import EdgeConfig
    from experiment.oracle import oracle
    from netemu import Shape, open_link

    condition = cell.condition
    trace = link_model.trace
    policy, race = split_race(cell.policy)
    adaptive = policy == ADAPTIVE
    with contextlib.ExitStack() as stack:
        address, link = None, None
        if run.has_tail:
            server_config = ServerConfig([run.path], threads=len(device.server_cpus))
            server = stack.enter_context(start_server_process(server_config, cpus=set(device.server_cpus)))
            uplink = Shape(
                rate_bps=condition.rate_bps,
                trace=trace,
                delay_ms=condition.rtt_ms / 2,
                loss=condition.loss,
            )
            downlink = Shape(rate_bps=condition.down_bps, delay_ms=condition.rtt_ms / 2, loss=condition.loss)
            # Started before this thread is pinned: the link's own thread keeps every CPU.
            link = stack.enter_context(open_link(condition.backend, server.address, uplink, downlink, seed=config.seed))
            address = link.address
        stack.enter_context(_pinned(set(device.edge_cpus)))
        if adaptive:
            settings = AdaptiveSettings(margin=config.adaptive.margin, confirm=config.adaptive.confirm, explore_s=config.adaptive.explore_s)
            # It starts from what a planner would know of the condition: its mean rate and RTT.
            edge_config = EdgeConfig(
                threads=device.threads,
                timeout_s=_REQUEST_TIMEOUT_S,
                adaptive=settings,
                initial_bandwidth_bps=planning_network(condition).bandwidth_bps,
                initial_rtt_ms=condition.rtt_ms,
                race_local=race,
            )
        else:
            edge_config = EdgeConfig(codec=run.codec, threads=device.threads, timeout_s=_REQUEST_TIMEOUT_S, race_local=race)
        parts = _device_parts(run, state, device, adaptive)
        client = stack.enter_context(EdgeClient(run.bundle, address, edge_config, **parts))
        if device.method == "cgroup":
            # After the client is built: loading the head is installation, not a request's work.
            stack.enter_context(cgroup_quota(device.slowdown))
        for i in range(config.warmup_requests):
            client.infer(state.samples[i % len(state.samples)][1])
        origin = (link.trace_origin_s() if link is not None else None) or time.monotonic()
        records: list[RequestRecord] = []
        started = time.monotonic()
        while _more(config, len(records), time.monotonic() - started):
            name, feed = state.samples[len(records) % len(state.samples)]
            t_s, unix = time.monotonic() - origin, time.time()
            # Without a link (all on the device) the rate the request would have met is still recorded.
            rate = link.rate_bps_now("up") if link is not None else trace.rate_bps_at(t_s) if trace is not None else condition.rate_bps
            best, best_ms = oracle(choices, link_model, t_s)
            base = dict(
                t_s=t_s, unix_time=unix, model=cell.model.label, policy=cell.policy, codec=cell.codec, condition=condition.name,
                request=len(records), sample=name, rate_mbps=rate / 1e6 if rate is not None else math.nan,
                oracle_cut=best.cut, oracle_ms=best_ms,
            )  # fmt: skip
            before = time.monotonic()
            try:
                result = client.infer(feed)
            except SplitInferError as err:
                records.append(RequestRecord(
                    **base, cut="" if adaptive else run.cut, head_size=run.head_size, predicted_ms=run.predicted_ms,
                    **_FAILED, error=f"{type(err).__name__}: {err}",
                ))  # fmt: skip
            else:
                t = result.timing
                top1 = int(np.argmax(next(iter(result.outputs.values()))))
                decision = result.decision
                estimate = decision.estimate.bandwidth_bps if decision is not None else None
                records.append(RequestRecord(
                    **base, cut=result.cut, head_size=state.profile.cut(result.cut).head_size,
                    predicted_ms=decision.predicted_ms if decision is not None else run.predicted_ms,
                    bytes_sent=result.bytes_sent, request_bytes=result.request_bytes, response_bytes=result.response_bytes,
                    head_ms=t.head_ms, encode_ms=t.encode_ms, network_ms=t.network_ms, decode_ms=t.decode_ms,
                    tail_ms=t.tail_ms, total_ms=t.total_ms, agree=top1 == state.reference_top1[name],
                    wire_codec=result.codec, estimate_mbps=estimate / 1e6 if estimate is not None else math.nan,
                    winner=result.winner,
                ))  # fmt: skip
            advance(1 if config.requests is not None else time.monotonic() - before)
    return records


def _device_parts(run: _Run, state: _ModelState, device: DeviceSetup, adaptive: bool) -> dict[str, Any]:
    """The emulated device's head, encoder and local tail for EdgeClient's constructor: the parts the
    client would make, paced to the profile or stretched by the slowdown (none to replace otherwise)."""
    from edge_runtime.local_tail import LocalTail
    from edge_runtime.parts import TensorEncoder, load_head

    if device.method != "paced" and device.stretch_factor == 1.0:
        return {}
    head = load_head(run.bundle, device.threads)
    local_tail = LocalTail(run.bundle, head, threads=device.threads)
    if device.method == "paced":
        heads, encodings, rests = _paces(state.profile)
        return {
            "head": PacedHead(head, heads, None if adaptive else run.cut),
            "encoder": PacedEncoder(TensorEncoder(), encodings),
            "local_tail": PacedLocalTail(local_tail, rests),
        }
    return {
        "head": StretchedHead(head, device.stretch_factor),
        "local_tail": StretchedLocalTail(local_tail, device.stretch_factor),
    }


def _paces(profile) -> tuple[dict[str, float], dict[tuple[str, str], float], dict[str, float]]:
    """What a paced device takes, in ms: each cut's head; each (cut, codec)'s encoding, with the
    in-request overhead; the rest of the model from each cut (all on the device minus the head)."""
    from splitter.cost.cut_cost import device_encode_ms, monotone_times

    slowdown = profile.edge_slowdown
    times = monotone_times(profile)
    heads = {name: head_ms * slowdown for name, (head_ms, _) in times.items()}
    whole_ms = max(heads[cut.name] for cut in profile.cuts if cut.is_edge_only)
    encodings = {
        (cut.name, codec): device_encode_ms(profile, codec, measured.encode_ms)
        for cut in profile.cuts
        for codec, measured in cut.codecs.items()
    }  # fmt: skip
    rests = {name: max(0.0, whole_ms - head_ms) for name, head_ms in heads.items()}
    return heads, encodings, rests


_FAILED = dict(
    bytes_sent=0, request_bytes=0, response_bytes=0, head_ms=math.nan, encode_ms=math.nan, network_ms=math.nan,
    decode_ms=math.nan, tail_ms=math.nan, total_ms=math.nan, agree=False,
)  # fmt: skip


def _more(config: ExperimentConfig, done: int, elapsed_s: float) -> bool:
    if config.requests is not None:
        return done < config.requests
    return elapsed_s < (config.seconds or 0.0)


@contextlib.contextmanager
def _pinned(cpus: set[int]) -> Iterator[None]:
    """This thread (and the threads it starts: gRPC's) on `cpus` while the block runs."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def _device_setup(config: ExperimentConfig, cpus: tuple[set[int], set[int]]) -> DeviceSetup:
    edge, server = (tuple(sorted(c)) for c in cpus)
    method, note = "stretch", ""
    if config.device.pace:
        method = "paced"
    elif config.device.cgroup:
        reason = cgroup_unavailable_reason()
        if reason is None:
            method = "cgroup"
        else:
            note = f"cgroup quota asked for but not used ({reason}): the head is stretched instead"
    if not config.device.pin:
        note = (note + "; " if note else "") + "not pinned: device and server share every CPU"
    return DeviceSetup(method, config.device.slowdown, config.device.threads, edge, server, note)


def _condition_meta(condition: Condition) -> dict[str, Any]:
    data: dict[str, Any] = {"name": condition.name, "rtt_ms": condition.rtt_ms, "down_mbps": condition.down_bps / 1e6 if condition.down_bps else None}
    data.update(loss=condition.loss, backend=condition.backend)
    if condition.trace is None:
        data["rate_mbps"] = (condition.rate_bps or 0.0) / 1e6
    else:
        from netemu.traces import load_trace

        trace = load_trace(condition.trace)
        data.update(trace=str(condition.trace), trace_mean_mbps=trace.mean_rate_bps / 1e6, trace_duration_s=trace.duration_s)
    return data


def _rate_series(condition: Condition, records: list[RequestRecord]) -> list[list[float]]:
    """The uplink rate over the cell's time (trace conditions), for re-plotting without the trace."""
    if condition.trace is None or not records:
        return []
    from netemu.traces import load_trace

    trace = load_trace(condition.trace)
    end = max(r.t_s for r in records) + max((r.total_ms for r in records if not math.isnan(r.total_ms)), default=0.0) / 1e3
    times = np.arange(0.0, end + _RATE_SAMPLE_S, _RATE_SAMPLE_S)
    return [[round(float(t), 3), trace.rate_bps_at(float(t), 1.0) / 1e6] for t in times]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"


def _machine() -> dict[str, Any]:
    from protos.device_profile import machine_facts

    facts: dict[str, Any] = dict(machine_facts())
    facts["cpus_usable"] = sorted(os.sched_getaffinity(0))
    facts["hostname"] = platform.node()
    return facts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("splitinfer", "numpy", "onnxruntime", "grpcio", "protobuf", "zstandard", "torch", "onnx", "matplotlib"):
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
