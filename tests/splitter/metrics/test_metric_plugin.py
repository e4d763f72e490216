"""A task metric from a separate installed package (a dist-info directory with entry_points.txt
on PYTHONPATH), found by name in a fresh process, as `profile --metric NAME` finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PLUGIN = '''
"""same_sign: a sample passes when every output has the unsplit output's signs (a user's metric)."""
import numpy as np


class SameSign:
    name = "same-sign"

    def passes(self, reference, split):
        return all(np.array_equal(np.sign(r), np.sign(s)) for r, s in zip(reference, split))
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "same_sign.py").write_text(PLUGIN)
    info = root / "same_sign-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: same-sign\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[splitinfer.metrics]\nsame-sign = same_sign:SameSign\n")
    return root


def run(args: list[str], pythonpath: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_an_installed_metric_is_listed_and_judges_samples(plugin_path: Path) -> None:
    listed = run(["-m", "splitinfer", "metrics"], plugin_path)
    assert listed.returncode == 0 and "same-sign" in listed.stdout.split() and "top1" in listed.stdout.split()
    code = (
        "import numpy as np; from splitter.metrics import create_metric; m = create_metric('same-sign'); "
        "print(m.name, m.passes([np.array([1.0, -2.0])], [np.array([0.5, -1.0])]), m.passes([np.array([1.0])], [np.array([-1.0])]))"
    )
    done = run(["-c", code], plugin_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["same-sign", "True", "False"]


def test_without_the_package_the_metric_is_unknown() -> None:
    done = run(["-c", "from splitter.metrics import create_metric; create_metric('same-sign')"], None)
    assert "unknown metric 'same-sign'; registered: ocr-text, rel-error, top1, top5, yolo-boxes" in done.stderr
