"""The splitter's steps composed into what a user asks for: profile a model, export a bundle.

Each function takes a model spec (a registered name or an .onnx path) and plain settings, so the
CLI, the demo and the benchmarks call the same code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from protos.bundle import Bundle
from protos.errors import SplitInferError
from splitter.cuts import Cut, cut_from_device_ops, enumerate_cuts, find_cut
from splitter.export import Verification, export_bundle
from splitter.graph import graph_from_onnx
from splitter.network import NetworkModel
from splitter.opprofile import profile_ops
from splitter.plan import DEFAULT_POLICY, plan
from splitter.policies import Constraints
from splitter.profile import Profile, ProfileSettings, profile_cuts
from splitter.sources import ModelSource, load_source


def model_cuts(source: ModelSource, *, include_input: bool = False) -> list[Cut]:
    return enumerate_cuts(graph_from_onnx(source.model), include_input=include_input)


def _progress(description: str):
    from rich.progress import track

    return lambda items: track(list(items), description=description, transient=True)


def profile_source(source: ModelSource, settings: ProfileSettings, *, progress: bool = False, per_op: bool = True) -> Profile:
    """Measures every cut, and the `input` cut too: it is the all-on-server baseline every plan is
    compared with, though policies choose it only when the user lets the raw input leave. With
    `per_op`, also every op and every activation (what the min-cut partitioner needs)."""
    cuts = model_cuts(source, include_input=True)
    name, feed = source.samples(1)[0]
    measured = profile_cuts(
        source.model,
        source.model_id,
        cuts,
        feed,
        settings,
        sample_name=name,
        progress=_progress(f"profiling {len(cuts)} cuts") if progress else iter,
    )
    if not per_op:
        return measured
    return dataclasses.replace(measured, ops=profile_ops(source.model, feed, settings))


def profile_model(
    spec: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    edge_threads: int = 1,
    server_threads: int | None = None,
    edge_slowdown: float = 1.0,
    repeats: int = 10,
    warmup: int = 2,
    idle_gap_ms: float = 2.0,
    progress: bool = False,
) -> Profile:
    settings = ProfileSettings(
        edge_threads=edge_threads, edge_slowdown=edge_slowdown, repeats=repeats, warmup=warmup, idle_gap_ms=idle_gap_ms
    )
    if server_threads is not None:
        settings = dataclasses.replace(settings, server_threads=server_threads)
    return profile_source(load_source(spec, input_shape=input_shape), settings, progress=progress)


def export_model(
    spec: str,
    out: str | Path,
    *,
    cut: str = "auto",
    codec: str = "int8+zstd",
    profile_path: str | Path | None = None,
    network: NetworkModel | None = None,
    input_shape: tuple[int, ...] | None = None,
    min_agreement: float = 1.0,
    samples: int = 4,
    quantize_head: bool = False,
    head_format: str = "onnx",
    policy: str = DEFAULT_POLICY,
    constraints: Constraints = Constraints(),
) -> tuple[Bundle, Verification]:
    """Exports the bundle for `cut`; `auto` plans it from the profile (measured now if not given)
    with `policy`, whose cut may be one no prefix gives (a min-cut across parallel branches)."""
    source = load_source(spec, input_shape=input_shape)
    include_input = cut == "input"
    cuts = model_cuts(source, include_input=include_input)
    if cut == "auto":
        if network is None:
            raise SplitInferError("--cut auto needs a network to plan for")
        measured = Profile.load(profile_path) if profile_path else profile_source(source, ProfileSettings(repeats=5), progress=True)
        if measured.model_id != source.model_id:
            raise SplitInferError(f"profile is of model {measured.model_id!r}, not {source.model_id!r}")
        chosen = plan(measured, network, codec=codec, policy=policy, constraints=constraints).chosen
        cut = chosen.name
        if chosen.head_ops:
            cuts.append(cut_from_device_ops(graph_from_onnx(source.model), set(chosen.head_ops)))
    calibration = source.calibration_samples(16) if quantize_head else ()
    return export_bundle(
        source, find_cut(cuts, cut), out, source.samples(samples), codec=codec, min_agreement=min_agreement,
        quantize_with=calibration, head_format=head_format,
    )
