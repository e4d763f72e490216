"""Export options for the device: the head in ONNX Runtime's mobile format, and the head quantised
to int8; both served and run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from protos.errors import SplitInferError
from splitter.export.bundle import export_bundle
from splitter.export.verify import ExportError
from splitter.graph.cuts import find_cut
from splitter.pipeline import model_cuts
from splitter.profile.timing import session
from splitter.sources import load_source


@pytest.fixture(scope="module")
def small():
    source = load_source("mobilenet_v2_035", input_shape=(1, 3, 96, 96))
    return source, find_cut(model_cuts(source), "features.9"), source.samples(2)


def _served_outputs(bundle, feeds) -> list[np.ndarray]:
    with serve(ServerConfig([bundle], port=0)) as server, EdgeClient(bundle, server.address) as client:
        return [next(iter(client.infer(feed).outputs.values())) for _, feed in feeds]


def test_a_head_in_ort_format_runs_on_the_edge_client(small, tmp_path: Path) -> None:
    source, cut, samples = small
    bundle, _ = export_bundle(source, cut, tmp_path / "b", samples, codec="fp32", head_format="ort")
    assert bundle.manifest.head_file == "head.ort" and (tmp_path / "b" / "head.ort").is_file()
    assert not (tmp_path / "b" / "head.onnx").exists()
    assert (tmp_path / "b" / "head.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer's identifier
    full = session(source.model, threads=1)
    for got, (_, feed) in zip(_served_outputs(bundle, samples), samples):
        np.testing.assert_allclose(got, full.run(None, feed)[0], atol=1e-4)


def test_an_int8_head_is_smaller_and_reported(small, tmp_path: Path) -> None:
    source, cut, samples = small
    bundle, _ = export_bundle(
        source,
        cut,
        tmp_path / "q",
        samples,
        codec="int8+zstd",
        min_agreement=0.0,
        quantize_with=source.calibration_samples(8),
    )
    report = bundle.manifest.verification["quantized_head"]
    assert report["calibration_inputs"] == 8
    # int8 weights, plus a scale per channel and quantise/dequantise nodes (3× on the full model).
    assert report["head_bytes_int8"] < report["head_bytes_fp32"] * 0.8
    assert report["head_ms_int8"] > 0 and report["head_ms_fp32"] > 0
    outputs = _served_outputs(bundle, samples)
    full = session(source.model, threads=1)
    for got, (_, feed) in zip(outputs, samples):
        want = full.run(None, feed)[0]
        assert got.shape == want.shape and np.isfinite(got).all()
        assert np.abs(got - want).max() == pytest.approx(report["max_abs_diff"], rel=1.0)


def test_the_int8_head_must_pass_the_agreement_gate(small, tmp_path: Path) -> None:
    source, cut, _ = small
    # The lossless wire passes; on 4 photos this random-weight model's int8 head flips some top-1s
    # (how many depends on onnxruntime's quantiser version: 1 of 4 with one, 3 with another).
    with pytest.raises(
        ExportError,
        match=r"with the int8 head the top-1 class agrees .* on (0|25|50|75)% of 4 samples \(required 100%\)",
    ):
        export_bundle(
            source,
            cut,
            tmp_path / "q",
            source.samples(4),
            codec="fp32",
            min_agreement=1.0,
            quantize_with=source.calibration_samples(8),
        )
    assert not (tmp_path / "q").exists()


def test_an_unknown_head_format_is_refused(small, tmp_path: Path) -> None:
    source, cut, samples = small
    with pytest.raises(SplitInferError, match="head format 'tflite'"):
        export_bundle(source, cut, tmp_path / "x", samples, head_format="tflite")
