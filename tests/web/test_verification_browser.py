"""The TypeScript SDK verifies a bundle in real headless Chromium as the contract says
(docs/contract.md §1): a bundle signed with `protos.signing` and served by the web port loads with
its key and is refused with another, every case of the contract's manifest vectors
(edge_runtime/web/src/test/verification-cases.ts: hashes, canonical forms, edited manifests, bad
signatures) passes on the browser's own WebCrypto, and a multi-cut bundle (tests/multicut.py's)
fetched from the same port runs each of its cuts, answered with the unsplit model's logits.

Driven by edge_runtime/web/drive-page.mjs on browser-test/verification.ts (built by `make web`).
Skipped only where node or chromium is absent (make test installs both on Debian as root)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from multicut import build_multi_cut, multi_input, multi_reference
from node_sdk import WEB, needs_node

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from protos.bundle import load_bundle
from protos.signing import load_signing_key, sign_bundle, write_key_pair

VECTORS = Path(__file__).resolve().parents[2] / "conformance" / "vectors"
PAGE = WEB / "dist" / "browser-test"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page() -> Path:
    needs_node()
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it on Debian as root)")
    if not (PAGE / "verification.js").is_file():
        subprocess.run(["npm", "run", "build"], cwd=WEB, check=True, capture_output=True, timeout=180)
    return PAGE


def test_the_sdk_verifies_bundles_in_chromium(page: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(VECTORS / "bundle", bundle)
    signer, trusted = write_key_pair(tmp_path / "keys", "signer")
    _, stranger = write_key_pair(tmp_path / "keys", "stranger")
    sign_bundle(bundle, load_signing_key(signer))
    root = tmp_path / "page"
    shutil.copytree(page, root)
    shutil.copyfile(trusted, root / "trusted.pem")
    shutil.copyfile(stranger, root / "stranger.pem")
    shutil.copyfile(VECTORS / "manifests.json", root / "manifests.json")
    shutil.copyfile(VECTORS / "bundle" / "head.onnx", root / "head.onnx")
    bundle_hash = load_bundle(bundle).manifest.bundle_hash
    multi = build_multi_cut(tmp_path / "multi")
    x = multi_input(5)
    x.tofile(root / "multi-input.f32")
    multi_reference(x).astype(np.float32).tofile(root / "multi-expected.f32")
    multi_hash = next(v for v in multi.variants if v.manifest.has_tail).manifest.bundle_hash
    config = ServerConfig([bundle, multi.path], threads=1, max_workers=4, web_port=0, web_root=root)
    with serve(config) as server:
        run = subprocess.run(
            ["node", "drive-page.mjs", f"http://127.0.0.1:{server.web_port}/?bundle={bundle_hash}&multi={multi_hash}"],
            cwd=WEB,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    shown = json.loads(run.stdout)
    assert "error" not in shown, shown
    failed = [case for case in shown["cases"] if "error" in case]
    assert not failed, failed
    manifests = json.loads((VECTORS / "manifests.json").read_text())
    # Both fetches from the server, each vector manifest twice, each edited field, each bad signature,
    # the unsigned bundle and the edited head, the multi-cut bundle.
    expected = 2 + 2 * len(manifests["manifests"]) + len(manifests["tampered"]) + len(manifests["bad_signatures"]) + 3
    assert len(shown["cases"]) == expected, [case["name"] for case in shown["cases"]]
