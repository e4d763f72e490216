"""The TypeScript edge SDK's own tests (edge_runtime/web/src/test, node's test runner) against a
real Python server on loopback (tests/web/fixture_server.py): run from here so `make test` runs
them. They need node and the SDK's packages (`make web` installs them)."""

from __future__ import annotations

import os
import subprocess
import sys

from node_sdk import WEB, needs_node


def test_the_typescript_sdk_passes_its_tests_against_a_python_server() -> None:
    needs_node()
    env = {**os.environ, "SPLITINFER_PYTHON": sys.executable}
    run = subprocess.run(["npm", "test"], cwd=WEB, env=env, capture_output=True, text=True, timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "# fail 0" in output and "# pass 0" not in output, output[-3000:]
