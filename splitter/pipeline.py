"""The splitter's steps composed into what a user asks for: profile a model, export a bundle.

Each function takes a model spec (a registered name or an .onnx path) and plain settings, so the
CLI, the demo and the benchmarks call the same code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from protos.bundle import Bundle
from protos.codec import Codec
from protos.errors import SplitInferError
from splitter.accuracy.agreement import refuse_random_inputs
from splitter.accuracy.evaluate import Evaluation, evaluation_for, measure_agreement
from splitter.cost.cut_cost import CutCost
from splitter.cost.network import NetworkModel
from splitter.cost.plan import AUTO_CODEC, DEFAULT_POLICY, plan
from splitter.export.bundle import check_head_format, export_bundle
from splitter.export.verify import Verification
from splitter.graph.cuts import Cut, cut_from_device_ops, enumerate_cuts, find_cut, spread_cuts
from splitter.policies import Constraints
from splitter.profile.measure import profile_cuts
from splitter.profile.ops import profile_ops
from splitter.profile.schema import Profile
from splitter.profile.timing import ProfileSettings
from splitter.sources import ModelSource, load_source


def model_cuts(source: ModelSource, *, include_input: bool = False) -> list[Cut]:
    return enumerate_cuts(source.graph, include_input=include_input)


def _progress(description: str):
    from rich.progress import track

    return lambda items: track(list(items), description=description, transient=True)


def profile_source(
    source: ModelSource,
    settings: ProfileSettings,
    *,
    progress: bool = False,
    per_op: bool = True,
    evaluation: Evaluation | None = None,
    max_cuts: int | None = None,
) -> Profile:
    """Measures every cut, and the `input` cut too: it is the all-on-server baseline every plan is
    compared with, though policies choose it only when the user lets the raw input leave. With
    `per_op`, also every op and every activation (what the min-cut partitioner needs); with an
    `evaluation`, the task agreement of every (cut, codec) on its samples (splitter.accuracy.evaluate).
    With `max_cuts`, only that many cuts spread by head size, and the two baselines."""
    every = model_cuts(source, include_input=True)
    cuts = every if max_cuts is None else spread_cuts(every, max_cuts)
    name, feed = source.samples(1)[0]
    measured = profile_cuts(
        source.model,
        source.model_id,
        cuts,
        feed,
        settings,
        sample_name=name,
        progress=_progress(f"profiling {len(cuts)} cuts") if progress else iter,
        graph=source.graph,
    )
    if len(cuts) < len(every):
        measured = dataclasses.replace(measured, model_cuts=len(every))
    if evaluation is not None:
        measured = with_agreement(measured, source, cuts, evaluation, progress)
    if not per_op:
        return measured
    return dataclasses.replace(measured, ops=profile_ops(source.model, feed, settings, graph=source.graph))


def with_agreement(
    profile: Profile, source: ModelSource, cuts: list[Cut], evaluation: Evaluation, progress: bool = False
) -> Profile:
    """`profile` with every codec's agreement measured, and the metric and samples recorded."""
    measured = measure_agreement(
        source.model,
        cuts,
        evaluation.samples.evaluation.feeds,
        sorted({name for cut in profile.cuts for name in cut.codecs}),
        evaluation.metric,
        progress=_progress(f"agreement on {len(evaluation.samples.evaluation)} samples") if progress else iter,
        clamps=source.graph.clamps,
    )
    cut_profiles = tuple(
        dataclasses.replace(
            cut,
            codecs={
                name: dataclasses.replace(cost, agreement=measured[cut.name][name]) for name, cost in cut.codecs.items()
            },
        )
        if cut.name in measured
        else cut
        for cut in profile.cuts
    )
    return dataclasses.replace(
        profile, cuts=cut_profiles, metric=evaluation.metric.name, samples=evaluation.samples.record()
    )


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
    samples: Path | None = None,
    metric: str | None = None,
    preprocess: str | None = None,
    max_cuts: int | None = None,
) -> Profile:
    """Profiles `spec`; with a task metric (the model's own, or `metric`), on `samples` (else the
    model's default ones), the agreement of every (cut, codec) too. `preprocess` replaces the
    model's preprocessing (protos.preprocess presets or a JSON file); `max_cuts` profiles only that
    many cuts, spread by head size, besides the baselines."""
    source = load_source(spec, input_shape=input_shape, preprocess=preprocess)
    evaluation = evaluation_for(source, samples, metric)
    settings = ProfileSettings(
        edge_threads=edge_threads, edge_slowdown=edge_slowdown, repeats=repeats, warmup=warmup, idle_gap_ms=idle_gap_ms
    )
    if server_threads is not None:
        settings = dataclasses.replace(settings, server_threads=server_threads)
    return profile_source(source, settings, progress=progress, evaluation=evaluation, max_cuts=max_cuts)


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
    max_error: float | None = None,
    samples_path: Path | None = None,
    metric: str | None = None,
    allow_random_samples: bool = False,
    preprocess: str | None = None,
    result: str = "",
    version: int = 0,
) -> tuple[Bundle, Verification]:
    """Exports the bundle for `cut`; `auto` plans it from the profile (measured now if not given)
    with `policy`, whose cut may be one no prefix gives (a min-cut across parallel branches).
    `codec` "auto" lets the plan choose the codec too.

    With a task metric (the model's own, or `metric`) the bundle is verified on the evaluation
    samples (`samples_path`, else the model's default ones) by the plan's accuracy rule, the same
    samples the profile measured on; without one, the top-1 class on `samples` of the model's
    default inputs must agree on `min_agreement` of them (lossy codecs then need
    `allow_random_samples` when those inputs are random). `preprocess` replaces the model's own.
    `result`: the form of the outputs a server returns by default (protos.result_form). `version`:
    the manifest's version (0: unversioned; edge_runtime.updates)."""
    check_head_format(head_format)  # before the model is built and measured
    source = load_source(spec, input_shape=input_shape, preprocess=preprocess)
    evaluation = evaluation_for(source, samples_path, metric)
    if (codec == AUTO_CODEC or Codec.parse(codec).lossy) and not allow_random_samples:
        _require_checkable(source, evaluation, codec)
    # Every cut by name, the raw input's too: a cut named (or planned with --allow-raw-input) is asked for.
    cuts = model_cuts(source, include_input=True)
    if cut == "auto":
        if network is None:
            raise SplitInferError("--cut auto needs a network to plan for")
        measured = _profile_for_plan(source, profile_path, evaluation)
        chosen = plan(
            measured,
            network,
            codec=codec,
            policy=policy,
            constraints=constraints,
            max_error=max_error,
            allow_random_samples=allow_random_samples,
        ).chosen
        cut, codec = _chosen_cut_and_codec(chosen, codec)
        if chosen.head_ops:
            cuts.append(cut_from_device_ops(source.graph, set(chosen.head_ops)))
    elif codec == AUTO_CODEC:
        raise SplitInferError("--codec auto is chosen by the plan: use it with --cut auto")
    if evaluation is None:
        calibration = source.calibration_samples(16) if quantize_head else ()
        return export_bundle(
            source,
            find_cut(cuts, cut),
            out,
            source.samples(samples),
            codec=codec,
            min_agreement=min_agreement,
            quantize_with=calibration,
            head_format=head_format,
            result=result,
            version=version,
        )
    return export_bundle(
        source,
        find_cut(cuts, cut),
        out,
        evaluation.named(),
        codec=codec,
        metric=evaluation.metric,
        max_error=max_error,
        quantize_with=evaluation.samples.calibration.feeds if quantize_head else (),
        head_format=head_format,
        samples_record=evaluation.samples.record(),
        result=result,
        version=version,
    )


def _chosen_cut_and_codec(chosen: CutCost, codec: str) -> tuple[str, str]:
    """The plan's cut and codec; all on the device sends nothing, so its bundle keeps a lossless
    codec (or the one asked for) for requests made anyway."""
    if chosen.is_edge_only:
        return chosen.name, "fp32" if codec == AUTO_CODEC else codec
    return chosen.name, chosen.codec


def _require_checkable(source: ModelSource, evaluation: Evaluation | None, codec: str) -> None:
    """A lossy codec can be checked only with a task metric on samples that are not random inputs."""
    if evaluation is None:
        raise SplitInferError(
            f"model {source.model_id!r} declares no task metric, so a lossy codec ({codec}) cannot be checked: "
            "pass --metric NAME and --samples PATH, or --allow-random-samples"
        )
    if evaluation.samples.evaluation.random:
        refuse_random_inputs(source.model_id, codec)


def _profile_for_plan(source: ModelSource, profile_path: str | Path | None, evaluation: Evaluation | None) -> Profile:
    """The profile to plan with (loaded, or measured now), checked to be of this model and these samples."""
    if profile_path:
        measured = Profile.load(profile_path)
    else:
        measured = profile_source(source, ProfileSettings(repeats=5), progress=True, evaluation=evaluation)
    if measured.model_id != source.model_id:
        raise SplitInferError(f"profile is of model {measured.model_id!r}, not {source.model_id!r}")
    check_same_samples(measured, evaluation)
    return measured


def check_same_samples(profile: Profile, evaluation: Evaluation | None) -> None:
    """A plan admits by the profile's agreement; export must verify on the samples it was measured on."""
    measured = profile.samples.get("evaluation")
    if evaluation is None or measured is None:
        return
    if measured["sha256"] != evaluation.samples.evaluation.sha256 or profile.metric != evaluation.metric.name:
        raise SplitInferError(
            f"the profile measured agreement with {profile.metric} on {measured['description']} (sha256 {measured['sha256'][:12]}), "
            f"but export verifies with {evaluation.metric.name} on {evaluation.samples.evaluation.description} "
            f"(sha256 {evaluation.samples.evaluation.sha256[:12]}): pass the profile's --samples and --metric, or profile again"
        )
