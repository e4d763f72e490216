"""One measured agreement shared by plan and export: a (cut, codec) the plan admits is one export
accepts, on every network preset and device speed; the budget admits by the Wilson lower bound;
samples and metrics from the user are checked before any work starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protos.bundle import load_bundle
from protos.errors import SplitInferError
from splitter.accuracy.agreement import Agreement, samples_needed, wilson_lower
from splitter.accuracy.evaluate import evaluation_for
from splitter.accuracy.samples import load_samples
from splitter.cost.network import PRESETS
from splitter.cost.plan import plan
from splitter.metrics import create_metric, list_metrics
from splitter.pipeline import export_model, profile_source
from splitter.profile.timing import ProfileSettings
from splitter.sources import load_source

MODEL, SHAPE = "mobilenet_v2_035", (1, 3, 96, 96)


@pytest.fixture(scope="module")
def source():
    return load_source(MODEL, input_shape=SHAPE)


@pytest.fixture(scope="module")
def profiles(source, tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """The model profiled once with its agreement, saved as a ×1 and a ×30 device."""
    measured = profile_source(
        source, ProfileSettings(repeats=1, warmup=1, server_threads=1), per_op=False, evaluation=evaluation_for(source)
    )
    root = tmp_path_factory.mktemp("profiles")
    return {s: dataclasses.replace(measured, edge_slowdown=s).save(root / f"x{s:g}.json") for s in (1.0, 30.0)}


def test_the_wilson_bound_is_what_a_budget_admits_by() -> None:
    assert wilson_lower(64, 64) == pytest.approx(64 / (64 + 1.959964**2), rel=1e-6)
    assert Agreement(63, 64).lower < Agreement(64, 64).lower < 0.95
    assert samples_needed(0.99) > 300 and wilson_lower(samples_needed(0.99), samples_needed(0.99)) >= 0.99
    assert str(Agreement(63, 64)).startswith("63/64 (98.4%, ≥ 91.")


@pytest.mark.slow
@pytest.mark.parametrize("slowdown", [1.0, 30.0])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_export_accepts_what_the_plan_chose(source, profiles, tmp_path: Path, preset: str, slowdown: float) -> None:
    from splitter.profile.schema import Profile

    profile = Profile.load(profiles[slowdown])
    for codec, budget in (("auto", 0.01), ("auto", None), ("int8+zstd", None)):
        chosen = plan(profile, PRESETS[preset], codec=codec, max_error=budget).chosen
        bundle, check = export_model(
            MODEL, tmp_path / f"{codec}-{budget}", cut="auto", codec=codec, profile_path=profiles[slowdown], network=PRESETS[preset],
            input_shape=SHAPE, max_error=budget,
        )  # fmt: skip
        manifest = bundle.manifest
        assert manifest.cut_name == chosen.name
        if not chosen.is_edge_only:
            assert manifest.codec == chosen.codec
            # The number export measured is the number the plan admitted by.
            measured = profile.cut(chosen.name).codecs[chosen.codec].agreement
            assert check.agreement["passed"] == measured.passed and check.agreement["count"] == measured.count == 64


def test_admitted_pairs_meet_the_budget_and_one_percent_admits_only_what_cannot_change(profiles) -> None:
    from protos.codec import Codec
    from splitter.profile.schema import Profile

    profile = Profile.load(profiles[30.0])
    for budget in (0.01, 0.1, 0.3):
        result = plan(profile, PRESETS["3g"], codec="auto", max_error=budget, policy="neurosurgeon")
        chosen = result.chosen
        if not chosen.is_edge_only and Codec.parse(chosen.codec).lossy:
            assert profile.cut(chosen.name).codecs[chosen.codec].agreement.lower >= 1 - budget
    # 64 samples bound no lossy codec at 99 %: the 1 % budget leaves lossless codecs and the device.
    chosen = plan(profile, PRESETS["cat1"], codec="auto", max_error=0.01).chosen
    assert chosen.is_edge_only or not Codec.parse(chosen.codec).lossy


def test_an_impossible_budget_names_the_rule_and_the_closest_cut(profiles) -> None:
    from splitter.policies import Constraints
    from splitter.profile.schema import Profile

    profile = Profile.load(profiles[1.0])
    with pytest.raises(SplitInferError, match=r"agreement of at least .*most accurate cut .* agrees at ≥ \d+\.\d%"):
        plan(
            profile,
            PRESETS["4g"],
            codec="int4ch+zstd",
            constraints=Constraints(allow_edge_only=False, min_agreement=0.999),
        )


def test_metrics_are_registered_and_bad_specs_are_clear() -> None:
    assert {"top1", "top5", "rel-error"} <= set(list_metrics())
    ref, same, other = [np.array([[0.1, 3.0, 0.2]])], [np.array([[0.2, 2.9, 0.1]])], [np.array([[3.1, 3.0, 0.2]])]
    assert create_metric("top1").passes(ref, same) and not create_metric("top1").passes(ref, other)
    assert create_metric("rel-error:10%").passes(ref, same) and not create_metric("rel-error:5%").passes(ref, same)
    with pytest.raises(SplitInferError, match="unknown metric 'iou'; registered: .*top1"):
        create_metric("iou")
    with pytest.raises(SplitInferError, match="rel-error:0.01"):
        create_metric("rel-error:lots")


def test_samples_from_a_folder_split_by_content_into_parts_that_never_overlap(source, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)).save(tmp_path / f"img{i:02d}.png")
    samples = load_samples(tmp_path, source)
    assert len(samples.calibration) == 3 and len(samples.evaluation) == 9
    assert not set(samples.calibration.names) & set(samples.evaluation.names)
    assert samples.evaluation.feeds[0]["input"].shape == SHAPE
    # Renaming the files changes nothing: the split is by content.
    for path in sorted(tmp_path.iterdir()):
        path.rename(path.with_name(f"renamed-{path.name}"))
    again = load_samples(tmp_path, source)
    assert (
        again.evaluation.sha256 == samples.evaluation.sha256 and again.calibration.sha256 == samples.calibration.sha256
    )


def test_samples_from_a_tensor_file(source, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).standard_normal((8, 3, 96, 96)).astype(np.float32))
    samples = load_samples(path, source)
    assert (len(samples.evaluation), len(samples.calibration)) == (6, 2)
    np.save(path, np.zeros((4, 3, 64, 64), np.float32))
    with pytest.raises(SplitInferError, match=r"has shape \(4, 3, 64, 64\); expected N×3×96×96"):
        load_samples(path, source)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no images"),
        ("notes.txt", "neither a folder of images nor a .npy/.npz"),
    ],
)
def test_bad_samples_paths_are_named(source, tmp_path: Path, name: str, fragment: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SplitInferError, match=fragment):
        load_samples(tmp_path / name, source)


def test_the_manifest_records_what_the_bundle_was_verified_on(source, profiles, tmp_path: Path) -> None:
    bundle, _ = export_model(
        MODEL, tmp_path / "b", cut="features.6", codec="fp16+zstd", input_shape=SHAPE, max_error=0.2
    )
    verification = load_bundle(bundle.path).manifest.verification
    assert verification["metric"] == "top1"
    assert verification["sample_sets"]["evaluation"]["sha256"] == evaluation_for(source).samples.evaluation.sha256
    assert verification["sample_sets"]["calibration"]["count"] == 8


@pytest.fixture(scope="module")
def onnx_file(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    onnx.save(source.model, str(path))
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitter.models import evaluation_images

    folder = tmp_path_factory.mktemp("photos")
    for photo in evaluation_images(24):
        Image.fromarray(np.asarray(photo.image)).save(folder / f"{photo.name.replace(':', '_')}.png")
    return folder


@pytest.mark.slow
def test_a_model_file_with_the_users_photos_preprocessing_and_metric_plans_and_exports(
    onnx_file: Path, photo_folder: Path, tmp_path: Path
) -> None:
    from splitter.pipeline import profile_model
    from splitter.profile.schema import Profile

    profile = profile_model(
        str(onnx_file),
        repeats=1,
        warmup=0,
        server_threads=1,
        edge_slowdown=30.0,
        samples=photo_folder,
        metric="top1",
        preprocess="unit",
    )
    assert profile.metric == "top1" and profile.samples["evaluation"]["count"] == 18 and not profile.random_samples
    assert profile.samples["evaluation"]["description"] == f"18 images from {photo_folder}"
    path = profile.save(tmp_path / "p.json")
    bundle, check = export_model(
        str(onnx_file), tmp_path / "b", cut="auto", codec="auto", profile_path=path, network=PRESETS["4g"],
        samples_path=photo_folder, metric="top1", preprocess="unit",
    )  # fmt: skip
    manifest = load_bundle(bundle.path).manifest
    assert manifest.preprocess.to_dict()["mean"] == [0.0, 0.0, 0.0] and manifest.preprocess.resize == 96
    assert manifest.verification["metric"] == "top1"
    assert (
        manifest.verification["sample_sets"]["evaluation"]["sha256"]
        == Profile.load(path).samples["evaluation"]["sha256"]
    )
    assert check.agreement is None or check.agreement["count"] == 18
    # Other samples than the profile's: export says so instead of verifying on something else.
    with pytest.raises(SplitInferError, match="the profile measured agreement with top1 on 18 images"):
        export_model(
            str(onnx_file), tmp_path / "c", cut="auto", codec="auto", profile_path=path, network=PRESETS["4g"], metric="top1",
            allow_random_samples=True,
        )  # fmt: skip


def test_a_model_file_without_samples_refuses_lossy_codecs(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        SplitInferError, match="declares no task metric, so a lossy codec .* pass --metric NAME and --samples PATH"
    ):
        export_model(str(onnx_file), tmp_path / "b", cut="features.6", codec="int8+zstd")
    with pytest.raises(
        SplitInferError,
        match=r"has no real samples: a lossy codec \(int8\+zstd\) is checked on random inputs.*--samples PATH",
    ):
        export_model(str(onnx_file), tmp_path / "b", cut="features.6", codec="int8+zstd", metric="top1")
    # Lossless needs neither; random inputs may be asked for by name.
    export_model(str(onnx_file), tmp_path / "lossless", cut="features.6", codec="fp32+zstd")
    bundle, _ = export_model(
        str(onnx_file),
        tmp_path / "random",
        cut="features.6",
        codec="fp16",
        metric="rel-error:0.01",
        allow_random_samples=True,
    )
    assert bundle.manifest.verification["sample_sets"]["evaluation"]["random"]


@pytest.mark.parametrize("slowdown", [1.0, 30.0])
def test_export_adaptive_carries_only_admitted_pairs_and_verifies_them(
    profiles, tmp_path: Path, slowdown: float
) -> None:
    from splitter.export.adaptive import export_adaptive
    from splitter.profile.schema import Profile

    profile = Profile.load(profiles[slowdown])
    bundle, checks = export_adaptive(
        MODEL, tmp_path / "adaptive", profile, rtt_ms=40.0, codecs=["int8+zstd"], input_shape=SHAPE
    )
    entries = bundle.manifest.decisions["entries"]
    assert entries
    from splitter.cost.plan import accuracy_constraints
    from splitter.export.adaptive import adaptive_decisions
    from splitter.policies import Constraints

    constraints = accuracy_constraints(profile, Constraints(), None)
    expected = adaptive_decisions(profile, 40.0, ["int8+zstd"], constraints=constraints)
    assert [(e["cut"], e["codec"]) for e in entries] == [c.key for c in expected.choices]
    for entry in entries:
        if not entry["edge_only"]:
            assert profile.cut(entry["cut"]).codecs[entry["codec"]].agreement.lower >= 0.9
            assert checks[entry["cut"]][entry["codec"]].agreement["count"] == 64


@pytest.mark.parametrize("codecs", [["int8+zstd"], ["fp16+zstd", "int8+zstd", "int4ch+zstd"]])
def test_the_adaptive_bundle_holds_the_fastest_admitted_choice_at_every_planned_rate(profiles, codecs) -> None:
    """Whatever the rate in the planned range, no admitted (cut, codec) of all the profile's cuts
    is faster than the best of the bundle's choices; and the bundle holds nothing the accuracy
    budget refuses (by the profile's measured agreement per cut and codec)."""
    from splitter.cost.plan import accuracy_constraints
    from splitter.export.adaptive import DEFAULT_HI_BPS, DEFAULT_LO_BPS, adaptive_decisions, admitted_choices
    from splitter.policies import Constraints
    from splitter.profile.schema import Profile

    profile = Profile.load(profiles[30.0])
    constraints = accuracy_constraints(profile, Constraints(), None)
    assert constraints.min_agreement == 0.9
    table = adaptive_decisions(profile, 40.0, codecs, constraints=constraints)
    admitted = admitted_choices(profile, codecs, constraints)
    refused = [
        (cut.name, codec)
        for cut in profile.cuts
        for codec in codecs
        if codec in cut.codecs and cut.codecs[codec].agreement.lower < 0.9
    ]
    assert not {c.key for c in table.choices} & set(refused)
    assert len(table.choices) < len(admitted) / 4
    for rate in np.geomspace(DEFAULT_LO_BPS, DEFAULT_HI_BPS, 600):
        best_anywhere = min(c.predicted_ms(rate, 40.0) for c in admitted)
        best_carried = min(c.predicted_ms(rate, 40.0) for c in table.choices)
        assert best_carried == pytest.approx(best_anywhere, rel=1e-9), rate


def _yolo_v8(
    boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3, anchors: int = 20
) -> np.ndarray:
    """A YOLOv8-layout output (1, 4 + classes, anchors) holding `boxes` (cx, cy, w, h, class, score)."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


def test_yolo_boxes_matches_objects_by_class_and_overlap() -> None:
    metric = create_metric("yolo-boxes")
    reference = _yolo_v8([(50, 50, 20, 20, 0, 0.9), (50, 51, 20, 20, 0, 0.8), (120, 80, 30, 10, 2, 0.6)])
    # NMS folds the two overlapping class-0 boxes into one: two objects.
    from splitter.metrics.detection import detections

    assert [c for c, _ in detections(reference[0])] == [0, 2]
    shifted = _yolo_v8([(52, 50, 20, 20, 0, 0.85), (121, 80, 30, 10, 2, 0.55)])
    assert metric.passes([reference], [shifted])
    assert not metric.passes(
        [reference], [_yolo_v8([(52, 50, 20, 20, 1, 0.85), (121, 80, 30, 10, 2, 0.55)])]
    )  # class changed
    assert not metric.passes(
        [reference], [_yolo_v8([(70, 50, 20, 20, 0, 0.85), (121, 80, 30, 10, 2, 0.55)])]
    )  # moved away
    assert not metric.passes(
        [reference], [_yolo_v8([(52, 50, 20, 20, 0, 0.85), (121, 80, 30, 10, 2, 0.55), (10, 10, 5, 5, 1, 0.4)])]
    )
    assert not metric.passes(
        [reference], [_yolo_v8([(52, 50, 20, 20, 0, 0.85), (121, 80, 30, 10, 2, 0.2)])]
    )  # below threshold
    # YOLOv5 layout: (1, boxes, 5 + classes), class scores times objectness.
    v5 = np.zeros((1, 30, 8), np.float32)
    v5[0, 0] = (50, 50, 20, 20, 0.9, 1.0, 0.0, 0.0)
    v5[0, 1] = (120, 80, 30, 10, 0.8, 0.0, 0.0, 0.9)
    assert [c for c, _ in detections(v5)] == [0, 2] and metric.passes([v5], [v5.copy()])


def test_ocr_text_reads_the_recognisers_outputs() -> None:
    from splitter.profile.timing import session
    from splitter.tasks import ocr

    source = load_source("ppocr_rec")
    assert (
        source.metric == "ocr-text"
        and load_source("ppocr_cls").metric == "top1"
        and load_source("ppocr_det").metric is None
    )
    (shape,) = source.input_shapes.values()
    engine, run = ocr._engine(), session(source.model, threads=1)
    outputs = [
        run.run(None, {"x": engine.text_rec.resize_norm_img(line, shape[3] / shape[2])[None]})
        for line in ocr.text_lines(2, shape[3] / shape[2])
    ]
    metric = create_metric("ocr-text")
    assert metric.text(outputs[0]) and metric.text(outputs[0]) != metric.text(outputs[1])
    assert metric.passes(outputs[0], [outputs[0][0] + np.float32(1e-5)]) and not metric.passes(outputs[0], outputs[1])
