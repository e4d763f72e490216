"""`splitinfer netemu ...` as a user runs it: the self-test prints its table, a link runs and
stops, a trace is described, and every bad argument is exit code 2 with one line naming it."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netemu.selftest import Endpoint, ping
from splitinfer.app import app

runner = CliRunner()


def cli(*args: str | Path):
    return runner.invoke(app, ["netemu", *[str(a) for a in args]])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_selftest_prints_the_measured_table() -> None:
    result = cli("selftest", "--rates", "5.85", "--seconds", "1", "--pings", "5", "--direction", "up")
    # Exit 1 means a target was missed (a busy machine); the measurement ran either way.
    assert result.exit_code in (0, 1), f"{result.output}\n{result.exception!r}"
    assert "user backend" in result.stdout and "5.85" in result.stdout
    assert ("within" in result.stdout) if result.exit_code == 0 else ("outside the target" in result.stdout)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--rates", "1,abc"], ["--rates", "'abc'"]),
        (["--rates", "0"], ["--rates", "'0'"]),
        (["--rtt", "4x"], ["--rtt", "'4x'"]),
        (["--backend", "netem"], ["--backend 'netem'"]),
        (["--direction", "sideways"], ["--direction 'sideways'"]),
        (["--seconds", "0.1"], ["seconds", "0.1"]),
        (["--loss", "lots"], ["--loss 'lots'"]),
        (["--loss", "100%"], ["--loss '100%'"]),
    ],
)
def test_selftest_refuses_bad_arguments(args: list[str], fragments: list[str]) -> None:
    assert_user_error(cli("selftest", *args), *fragments)


def test_link_runs_until_its_time_is_up() -> None:
    with Endpoint() as endpoint:
        result = cli("link", endpoint.address, "--rtt", "20ms", "--up", "5mbit", "--seconds", "1")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert f"→ {endpoint.address}" in result.stdout and "5 Mbit/s, delay 10 ms" in result.stdout


def test_link_carries_traffic() -> None:
    with Endpoint() as endpoint:
        # A fixed port, so the test knows where to connect while the command runs.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        done = threading.Event()

        def run() -> None:
            cli("link", endpoint.address, "--listen", f"127.0.0.1:{port}", "--rtt", "20ms", "--seconds", "2")
            done.set()

        threading.Thread(target=run, daemon=True).start()
        rtts = []
        for _ in range(50):  # the command needs a moment to listen
            try:
                rtts = ping(f"127.0.0.1:{port}", 3)
                break
            except OSError:
                threading.Event().wait(0.05)
        assert rtts and min(rtts) >= 19.5, rtts
        assert done.wait(20)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["127.0.0.1"], ["'127.0.0.1' is not HOST:PORT"]),
        (["127.0.0.1:1", "--up", "5x"], ["'5x'"]),
        (["127.0.0.1:1", "--rtt", "soon"], ["--rtt", "'soon'"]),
        (["127.0.0.1:1", "--seconds", "-1"], ["--seconds"]),
        (["127.0.0.1:1", "--queue-kb", "0"], ["--queue-kb"]),
        (["127.0.0.1:1", "--up-trace", "missing.up"], ["'missing.up' does not exist"]),
    ],
)
def test_link_refuses_bad_arguments(args: list[str], fragments: list[str]) -> None:
    assert_user_error(cli("link", *args), *fragments)


def test_trace_describes_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    path.write_text("seconds,mbit\n0,2\n1,6\n")
    result = cli("trace", path)
    assert result.exit_code == 0, result.output
    assert "2.0 s" in result.stdout and "mean 4.000 Mbit/s" in result.stdout


def test_trace_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.up"
    path.write_text("1\n2\nx\n")
    assert_user_error(cli("trace", path), "bad.up", "line 3")


def test_link_refuses_loss_on_the_user_backend() -> None:
    with Endpoint() as endpoint:
        assert_user_error(cli("link", endpoint.address, "--loss", "1%", "--seconds", "1"), "loss needs the tun backend")
