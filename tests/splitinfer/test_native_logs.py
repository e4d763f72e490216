"""The native layers' log lines (gRPC's C++ core here) stay off stderr unless `--verbose`: a port in
use is one line from the command, not that line beside gRPC's own."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from splitinfer.native_logs import verbose_requested

REPO = Path(__file__).resolve().parents[2]
# glog-style lines of gRPC's core ("E1207 23:25:46.558297 12811 add_port.cc:83] ...") and onnxruntime's.
NATIVE_LINE = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ |\[[EWI]:onnxruntime", re.MULTILINE)


def _serve_on_a_busy_port(bundle: Path, *root_options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        return subprocess.run(
            [sys.executable, "-m", "splitinfer", *root_options, "serve", str(bundle), "--port", str(port)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_a_port_in_use_is_one_line_without_grpcs_own(tiny_bundle: Path) -> None:
    done = _serve_on_a_busy_port(tiny_bundle)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot listen on 127.0.0.1:" in errors[0] and "port is in use" in errors[0]
    assert not NATIVE_LINE.search(done.stderr), done.stderr


def test_verbose_brings_grpcs_lines_back(tiny_bundle: Path) -> None:
    done = _serve_on_a_busy_port(tiny_bundle, "--verbose")
    assert done.returncode == 2
    assert re.search(r"^E\d{4} .*add_port\.cc.*Address already in use", done.stderr, re.MULTILINE), done.stderr


@pytest.mark.parametrize(
    ("args", "verbose"),
    [
        (["-v", "serve", "b"], True),
        (["--version", "--verbose", "plan"], True),
        (["serve", "b", "--verbose"], False),  # an option of serve, which has none: refused there
        (["run", "-v"], False),
        ([], False),
    ],
)
def test_verbose_is_read_among_the_root_options(args: list[str], verbose: bool) -> None:
    assert verbose_requested(args) is verbose
