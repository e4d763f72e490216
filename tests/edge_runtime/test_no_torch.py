"""The edge install has no torch: both runtimes import and run end to end with torch, the splitter
and onnx made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from bundles import reference_output, tiny_input

SCRIPT = r"""
import importlib.abc, sys
import numpy as np

BLOCKED = {"torch", "torchvision", "splitter", "onnx"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the edge install")
sys.meta_path.insert(0, Blocker())

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
import cloud_runtime.server

server, bundle, x_path, out_path = sys.argv[1:]
with EdgeClient(bundle, server, EdgeConfig(codec="int8+zstd")) as client:
    result = client.infer(np.load(x_path))
    streamed = list(client.infer_stream([np.load(x_path)]))
np.save(out_path, result.outputs["logits"])
assert np.array_equal(streamed[0].outputs["logits"], result.outputs["logits"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def test_runtimes_run_without_torch(tmp_path: Path, tiny_bundle: Path, tiny_server: str) -> None:
    x = tiny_input(5)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            tiny_server,
            str(tiny_bundle),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference_output(x), atol=2e-2)
