"""A policy from a separate installed package, used by name from the command line: a package with a
dist-info directory (METADATA + entry_points.txt, what `pip install` leaves) on PYTHONPATH, and
`splitinfer plan --policy NAME` in a fresh process, which finds it through importlib.metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from handmade import cut, profile  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

PLUGIN = '''
"""fewest_bytes: the cut that sends the fewest bytes (a researcher's policy, outside splitinfer)."""
from splitter.policies import Constraints


class FewestBytes:
    def choose(self, costs, constraints: Constraints):
        return min(constraints.admit(costs), key=lambda c: (c.nbytes, c.head_size))
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "fewest_bytes.py").write_text(PLUGIN)
    info = root / "fewest_bytes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fewest-bytes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[splitinfer.policies]\nfewest-bytes = fewest_bytes:FewestBytes\n")
    return root


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cuts = [cut("a", 1, 1.0, 20.0, 40_000), cut("b", 2, 5.0, 10.0, 10_000), cut("c", 3, 12.0, 3.0, 3_000),
            cut("d", 4, 20.0, 1.0, 500), cut("output", 5, 24.0, 0.0, 0)]  # fmt: skip
    return profile(cuts).save(tmp_path_factory.mktemp("plan") / "profile.json")


def splitinfer(*args: str | Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "splitinfer", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_installed_plugin_policy_plans_from_the_cli(plugin_path: Path, profile_path: Path) -> None:
    done = splitinfer(
        "plan",
        profile_path,
        "--policy",
        "fewest-bytes",
        "--split-only",
        "--bandwidth",
        "8mbit",
        "--rtt",
        "10ms",
        pythonpath=plugin_path,
    )
    assert done.returncode == 0, done.stderr
    assert "hand: fewest-bytes plan for 8 Mbit/s, RTT 10 ms" in done.stdout
    assert "chosen: d — 32.2 ms predicted" in done.stdout
    listed = splitinfer("policies", pythonpath=plugin_path)
    assert "fewest-bytes" in listed.stdout.split() and "neurosurgeon" in listed.stdout.split()


def test_without_the_package_the_name_is_unknown(profile_path: Path) -> None:
    done = splitinfer("plan", profile_path, "--policy", "fewest-bytes")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown policy 'fewest-bytes'; registered: cloud-only, edge-only")
