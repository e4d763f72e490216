"""What a cell runs, prepared: each model once (its source, a profile of every cut, the evaluation
samples and the unsplit model's top-1 on each, every cut's predicted latency at every condition),
and for each cell the plan its policy makes and the bundle that plan needs — one cut's bundle, or
the multi-cut bundle of policy "adaptive" — exported once per model and kept in the model's cache.
"""

from __future__ import annotations

import dataclasses
import math
import re
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from experiment.config import ADAPTIVE, BEST_STATIC, ExperimentConfig, ModelSpec, split_race
from experiment.device import DeviceSetup
from experiment.grid import Cell, constraints_for, planning_network

# The codec an all-on-device bundle is exported with when the cell's codec is `auto` (nothing
# crosses, so it never matters).
_EDGE_ONLY_CODEC = "int8+zstd"


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    source: Any  # splitter.sources.ModelSource
    profile: Any  # splitter.profile.schema.Profile
    cuts: list
    samples: list[tuple[str, dict[str, np.ndarray]]]
    reference_top1: dict[str, int]
    # (cut, codec) → Bundle, ("adaptive", codecs, rtt) → MultiCutBundle, filled as cells need them.
    bundles: dict[tuple, Any]
    meta: dict[str, Any]
    # (codecs, rtt) → the adaptive bundle's DecisionTable, computed once.
    decisions: dict[tuple, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CellRun:
    """What a cell runs: the bundle path the server serves, and what the client loads."""

    path: Path
    has_tail: bool
    bundle: Any  # Bundle or MultiCutBundle
    cut: str  # the fixed cut, or "adaptive"
    predicted_ms: float
    head_size: int
    codec: str


def prepare_model(model: ModelSpec, config: ExperimentConfig, device: DeviceSetup, out_dir: Path) -> PreparedModel:
    from splitter.accuracy.evaluate import evaluation_for
    from splitter.pipeline import model_cuts, profile_source
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
    profile.save(out_dir / "profiles" / f"{slug(model.label)}.json")
    # Requests cycle over the evaluation samples (a registered model's 64 photos and views of
    # them); a model without a task metric gets its four default inputs (photos or random tensors).
    evaluation = evaluation_for(source, model.samples, model.metric)
    samples = evaluation.named() if evaluation is not None else source.samples(4)
    if evaluation is not None:
        described = evaluation.samples.evaluation.description
    else:
        described = f"{len(samples)} default inputs ({', '.join(n for n, _ in samples)})"
    reference = session(source.model, threads=1)
    top1 = {name: int(np.argmax(reference.run(None, feed)[0])) for name, feed in samples}
    meta = {
        "model_id": source.model_id,
        "input_shapes": source.input_shapes,
        "cuts": len(profile.cuts),
        "predictions": _predictions(profile, config),
        "samples": described,
    }
    return PreparedModel(source, profile, model_cuts(source, include_input=True), samples, top1, {}, meta)


def _predictions(profile, config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Per condition and codec, every cut's best predicted latency (over its codecs, for `auto`)."""
    from splitter.cost.plan import cost_table

    predictions: dict[str, dict[str, Any]] = {}
    for condition, codec in product(config.conditions, config.codecs):
        table = cost_table(profile, planning_network(condition), codec)
        best: dict[str, Any] = {}
        for cost in table.cuts:
            if cost.name not in best or cost.total_ms < best[cost.name].total_ms:
                best[cost.name] = cost
        predictions.setdefault(condition.name, {})[codec] = {
            "cut": list(best),
            "head_size": [c.head_size for c in best.values()],
            "predicted_ms": [c.total_ms for c in best.values()],
        }
    return predictions


def plan_cell(
    cell: Cell, state: PreparedModel, config: ExperimentConfig, link, choices, out_dir: Path
) -> tuple[CellRun, dict[str, Any]]:
    """The cell's plan and its bundle; and what meta.json records of the plan beyond the cut."""
    from experiment.oracle import best_static, whole_model_ms
    from splitter.cost.plan import plan

    policy, race = split_race(cell.policy)
    constraints = constraints_for(config, policy)
    extra: dict[str, Any] = {"race": race}
    if policy == ADAPTIVE:
        multi = multi_bundle(state, config, cell_codecs(cell, state), cell.condition.rtt_ms, out_dir)
        has_tail = any(v.manifest.has_tail for v in multi.variants)
        run = CellRun(multi.path, has_tail, multi, "adaptive", math.nan, -1, "")
        cuts = [c.cut_name for c in multi.manifest.cuts]
        settings = config.adaptive
        extra["adaptive"] = {
            "cuts": cuts,
            "planned_rates_mbps": [settings.min_rate_bps / 1e6, settings.max_rate_bps / 1e6],
            "margin": settings.margin,
            "confirm": settings.confirm,
        }
        return run, extra
    if policy == BEST_STATIC:
        duration_s = config.seconds if config.seconds is not None else _predicted_span_s(choices, link, config)
        race_ms = whole_model_ms(choices) if race else None
        best, mean_ms = best_static(choices, link, duration_s, race_ms=race_ms)
        name, codec, predicted, head_size = best.cut, best.codec, mean_ms, best.head_size
        extra["best_static_predicted_mean_ms"] = mean_ms
    else:
        network = planning_network(cell.condition)
        chosen = plan(state.profile, network, codec=cell.codec, policy=policy, constraints=constraints).chosen
        name, codec, predicted, head_size = chosen.name, chosen.codec, chosen.total_ms, chosen.head_size
    codec = codec if codec != "-" else (cell.codec if cell.codec != "auto" else _EDGE_ONLY_CODEC)
    bundle = single_bundle(state, name, codec, out_dir)
    return CellRun(bundle.path, bundle.manifest.has_tail, bundle, name, predicted, head_size, codec), extra


def _predicted_span_s(choices, link, config: ExperimentConfig) -> float:
    """How long `config.requests` requests last at the fastest option (for a closed-loop prediction)."""
    from experiment.oracle import predicted_ms

    return (config.requests or 1) * min(predicted_ms(o, link, 0.0) for o in choices) / 1e3


def cell_codecs(cell: Cell, state: PreparedModel) -> list[str]:
    """The codecs a cell may send with: its own, or every profiled one for `auto`."""
    from splitter.cost.plan import AUTO_CODEC

    if cell.codec != AUTO_CODEC:
        return [cell.codec]
    return sorted({name for cut in state.profile.cuts for name in cut.codecs})


def single_bundle(state: PreparedModel, cut: str, codec: str, out_dir: Path):
    from splitter.export.bundle import export_bundle
    from splitter.graph.cuts import find_cut

    key = (cut, codec)
    if key not in state.bundles:
        where = out_dir / "bundles" / slug(state.source.model_id) / slug(f"{cut}-{codec}")
        # The experiment measures agreement itself, per request: a codec that changes a top-1 is
        # a result to record, not a reason to drop the cell. head∘tail in fp32 is still checked.
        state.bundles[key], _ = export_bundle(
            source=state.source,
            cut=find_cut(state.cuts, cut),
            out_dir=where,
            samples=state.samples,
            codec=codec,
            min_agreement=0.0,
        )
    return state.bundles[key]


def multi_bundle(state: PreparedModel, config: ExperimentConfig, codecs: list[str], rtt_ms: float, out_dir: Path):
    from splitter.export.adaptive import carried_cuts
    from splitter.export.bundle import export_multi_cut
    from splitter.graph.cuts import find_cut

    key = ("adaptive", tuple(codecs), rtt_ms)
    if key not in state.bundles:
        decisions = adaptive_decisions(state, config, codecs, rtt_ms)
        names = carried_cuts(decisions)
        folder = slug(f"adaptive-{'-'.join(codecs)}-{rtt_ms:g}ms")
        where = out_dir / "bundles" / slug(state.source.model_id) / folder
        state.bundles[key], _ = export_multi_cut(
            state.source, [find_cut(state.cuts, n) for n in names], where, state.samples, decisions, min_agreement=0.0
        )
    return state.bundles[key]


def adaptive_decisions(state: PreparedModel, config: ExperimentConfig, codecs: list[str], rtt_ms: float):
    """The decision table of the adaptive bundle for `codecs` at `rtt_ms`, planned for the config's
    rate range ([adaptive] min_rate to max_rate): what it carries, and so what the per-request
    oracle over the bundle's choices ranges over (computed once per model)."""
    from splitter.export.adaptive import adaptive_decisions as decisions_for

    key = (tuple(codecs), rtt_ms)
    if key not in state.decisions:
        state.decisions[key] = decisions_for(
            state.profile,
            rtt_ms,
            codecs,
            constraints=constraints_for(config, ADAPTIVE),
            lo_bps=config.adaptive.min_rate_bps,
            hi_bps=config.adaptive.max_rate_bps,
        )
    return state.decisions[key]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"
