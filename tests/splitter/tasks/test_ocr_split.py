"""A trained model split for real: PP-OCRv4's text detector cut in two, its tail served over gRPC,
and the OCR pipeline's reading of a scanned page compared with the unsplit pipeline's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from cloud_runtime.config import ServerConfig  # noqa: E402
from cloud_runtime.server import serve  # noqa: E402
from edge_runtime.client import EdgeClient  # noqa: E402
from splitter.export.bundle import export_bundle  # noqa: E402
from splitter.pipeline import model_cuts  # noqa: E402
from splitter.sources import load_source  # noqa: E402
from splitter.tasks import ocr  # noqa: E402


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory):
    source = load_source("ppocr_det")
    cuts = model_cuts(source)
    cut = cuts[len(cuts) // 2]
    assert len(cut.tensors) > 1  # inside the feature pyramid: several tensors cross
    page = ocr.documents(1)[0][1]
    feed = {"x": ((page.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()}
    # The detector outputs a probability map, not classes: the export's top-1 check does not
    # apply (min_agreement=0); the task check below is the one that counts.
    bundle, check = export_bundle(
        source, cut, tmp_path_factory.mktemp("det") / "bundle", [("page", feed)], codec="int8+zstd", min_agreement=0.0
    )
    assert check.max_abs_diff_fp32 <= 1e-4
    return bundle


def test_the_split_detector_reads_the_scanned_page_like_the_unsplit_one(detector_bundle) -> None:
    page = ocr.documents(1)[0][1]
    unsplit = ocr.read(page)
    assert "Region-based segmentation" in unsplit.text and len(unsplit.lines) >= 5
    config = ServerConfig([detector_bundle], port=0)
    with serve(config) as server, EdgeClient(detector_bundle, server.address) as client:
        sent = []

        def detector(x: np.ndarray) -> list[np.ndarray]:
            result = client.infer({"x": x})
            sent.append(result.bytes_sent)
            return list(result.outputs.values())

        split = ocr.read(page, detector)
    assert split.text == unsplit.text
    agreement = ocr.compare(unsplit, split)
    assert agreement.same_text and agreement.box_iou > 0.9
    raw = sum(s.nbytes for s in detector_bundle.manifest.cut)
    assert sent and max(sent) * 4 < raw  # int8 + zstd: at least 4× fewer bytes than raw fp32


def test_rendered_documents_are_read_as_written() -> None:
    image, truth = ocr.rendered_document(0)
    reading = ocr.read(image)
    # PP-OCR sometimes drops a space; the words themselves must come through.
    assert reading.text.replace(" ", "") == truth.replace(" ", "")
