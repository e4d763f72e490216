"""The README's commands, run as written, so the README cannot go stale: every `splitinfer` line of
its bash blocks (the pipeline step by step: models, profile, plan, export, serve, run) and its
Python API example, in a fresh folder.

What has to change to run them in under a minute, and only that: the model is the small
`resnet_tiny` for `efficientnet_lite0` (so much faster that the device is made 1000× slower for
30×, for the plan to split it with a margin timing noise cannot undo), the profile times each cut
once, the server takes any free port for 50051, and `photo.jpg` and HOST are a real photo and
that port. A flag or command
the README shows that does not exist, or a step that fails, fails the test. `make demo`, minutes
long, is not run here (tests/test_e2e.py runs the demo's steps).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitter.models import evaluation_photos

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

SUBSTITUTIONS = [
    ("efficientnet_lite0", "resnet_tiny"),
    ("--edge-slowdown 30", "--edge-slowdown 1000"),
    ("--out p.json", "--out p.json --repeats 1 --warmup 0"),
    ("--port 50051", "--port 0"),
]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


def readme_commands() -> list[str]:
    """The `splitinfer ...` lines of the README's bash blocks, comments off."""
    lines = (line.split("#", 1)[0].strip() for block in _blocks("bash") for line in block.splitlines())
    return [line for line in lines if line.startswith("splitinfer ")]


def _adapted(command: str) -> list[str]:
    for old, new in SUBSTITUTIONS:
        command = command.replace(old, new)
    return command.split()[1:]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_the_readme_shows_the_pipeline() -> None:
    assert [c.split()[1] for c in readme_commands()] == ["models", "profile", "plan", "export", "serve", "run"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_readmes_commands_run(tmp_path: Path) -> None:
    Image.fromarray(np.asarray(evaluation_photos()[0].image)).save(tmp_path / "photo.jpg")
    server = None
    try:
        for command in readme_commands():
            args = _adapted(command)
            if args[0] == "serve":
                server = subprocess.Popen(
                    [sys.executable, "-m", "splitinfer", *args],
                    cwd=tmp_path,
                    env=_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                address = _listening(server)
                continue
            if args[0] == "run":
                args = [a.replace("HOST:50051", address) for a in args]
            done = subprocess.run(
                [sys.executable, "-m", "splitinfer", *args],
                cwd=tmp_path,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if args[0] == "run":
                assert "top classes: " in done.stdout and f"via {address}" in done.stdout
        _run_the_python_api(tmp_path, address)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def _listening(server: subprocess.Popen) -> str:
    lines = []
    for line in server.stderr:
        match = re.search(r"listening on (\S+:\d+)", line)
        if match:
            return match.group(1)
        lines.append(line)
    raise AssertionError(f"the server exited with {server.wait()} before listening: {''.join(lines)}")


def _run_the_python_api(folder: Path, address: str) -> None:
    """The README's Python block against the bundle and server of the steps above; the server half
    serves once more on any free port and stops, where the README waits."""
    (block,) = _blocks("python")
    edge, server = block.split("from cloud_runtime.config", 1)
    edge = edge.replace('"bundle/"', repr(str(folder / "bundle"))).replace('"server:50051"', repr(address))
    image = np.asarray(evaluation_photos()[0].image)
    scope: dict = {"image_uint8_hwc": image}
    exec(edge, scope)
    assert scope["result"].outputs and scope["result"].bytes_sent > 0
    server = "from cloud_runtime.config" + server
    server = server.replace('"bundle/"', repr(str(folder / "bundle"))).replace("port=50051", "port=0")
    assert "server.wait()" in server
    exec(server.replace("server.wait()", "assert server.address"), {})
