"""The demo page in real headless Chromium: `serve BUNDLE --web-port` serves it; the browser runs
the trained model's head (onnxruntime-web), sends its output over gRPC-Web, and shows the server's
answer, which for three scikit-image photos names the top class the unsplit model names in Python,
from the input tensor Python makes of each photo, to the bit.

Driven by edge_runtime/web/drive-demo.mjs (playwright-core on the system's Chromium). Skipped only
where node or chromium is absent (make test installs both on Debian as root)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from node_sdk import WEB, needs_node
from PIL import Image
from typer.testing import CliRunner

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from splitinfer.app import app
from splitinfer.commands.serving import DEMO_PAGE
from splitter.models import evaluation_photos
from splitter.sources import load_source

MODEL = "efficientnet_lite0"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def demo_page() -> Path:
    needs_node()
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it on Debian as root)")
    if not (DEMO_PAGE / "index.html").is_file():
        subprocess.run(["npm", "run", "build"], cwd=WEB, check=True, capture_output=True, timeout=180)
    return DEMO_PAGE


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "bundle"
    result = CliRunner().invoke(app, ["export", MODEL, "--cut", "_blocks.7", "--codec", "fp16+zstd", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_demo_page_names_each_photo_as_the_unsplit_model_does(
    demo_page: Path, bundle: Path, tmp_path: Path
) -> None:
    source = load_source(MODEL)
    unsplit = ort.InferenceSession(source.model.SerializeToString(), providers=["CPUExecutionProvider"])
    photos, expected, tensors = [], {}, {}
    for photo in evaluation_photos()[:3]:
        path = tmp_path / f"{photo.name}.png"  # lossless: the browser decodes the pixels Python reads
        Image.fromarray(np.asarray(photo.image)).save(path)
        photos.append(str(path))
        feed = source.inputs_from_image(photo.image)
        tensors[path.name] = hashlib.sha256(next(iter(feed.values())).tobytes()).hexdigest()
        logits = unsplit.run(None, feed)[0][0]
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        expected[path.name] = (int(np.argmax(logits)), float(probabilities.max()))
    shown = []
    with serve(ServerConfig([bundle], threads=1, max_workers=4, web_port=0, web_root=demo_page)) as server:
        # Every photo over gRPC-Web (the page's default), the first once more over Connect.
        for query, chosen in (("", photos), ("?protocol=connect", photos[:1])):
            run = subprocess.run(
                ["node", "drive-demo.mjs", f"http://127.0.0.1:{server.web_port}/{query}", *chosen],
                cwd=WEB,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert run.returncode == 0, run.stderr[-4000:]
            shown += [json.loads(line) for line in run.stdout.splitlines()]
    assert [page["result"]["protocol"] for page in shown] == ["grpc-web"] * 3 + ["connect"], run.stdout
    for page in shown:
        result = page["result"]
        index, probability = expected[result["photo"]]
        assert "error" not in result, result
        # The browser decoded the PNG (createImageBitmap, no colour conversion) and preprocessed
        # it to Python's tensor, to the bit.
        assert result["inputSha256"] == tensors[result["photo"]]
        assert result["server"][0]["index"] == index, (result["photo"], result["server"][0], index)
        assert abs(result["server"][0]["probability"] - probability) <= 0.02
        # The page's own check: the head and tail run in the browser name the same class.
        assert result["matches"] and result["local"][0]["index"] == index
        assert "matches" in page["verdict"] and result["bytesSent"] > 0 and page["stages"] == 12
        assert result["timing"]["headMs"] > 0 and result["timing"]["tailMs"] > 0
