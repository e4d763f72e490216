"""`splitinfer plan` with the policy options: other policies, a deadline, a memory limit, the bandwidth
sweep; every bad value answered with exit code 2 and one line naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from handmade import cut, profile  # noqa: E402
from typer.testing import CliRunner

from splitinfer.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cuts = [cut("a", 1, 1.0, 20.0, 40_000, memory=(1000, 5000)), cut("b", 2, 5.0, 10.0, 10_000, memory=(3000, 4000)),
            cut("c", 3, 12.0, 3.0, 3_000, memory=(9000, 2000)), cut("d", 4, 20.0, 1.0, 500, memory=(20000, 1000)),
            cut("output", 5, 24.0, 0.0, 0, memory=(30000, 500))]  # fmt: skip
    return profile(cuts).save(tmp_path_factory.mktemp("plan") / "profile.json")


def plan(*args: str | Path):
    return runner.invoke(app, ["plan", *map(str, args)])


def chosen(result) -> str:
    assert result.exit_code == 0, result.output
    match = re.search(r"^chosen: (\S+) — ", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


NET = ["--bandwidth", "8mbit", "--rtt", "10ms"]


def test_policies_and_constraints_from_the_command_line(profile_path: Path) -> None:
    assert chosen(plan(profile_path, *NET)) == "output"
    assert chosen(plan(profile_path, *NET, "--policy", "throughput")) == "b"
    assert chosen(plan(profile_path, *NET, "--policy", "throughput", "--deadline", "30ms")) == "c"
    assert chosen(plan(profile_path, *NET, "--max-head-memory", "8kB")) == "b"
    result = plan(profile_path, *NET, "--policy", "throughput")
    assert "97.6 frames/s pipelined" in result.stdout and "mJ on the device" in result.stdout


def test_sweep_prints_the_switching_points(profile_path: Path) -> None:
    result = plan(profile_path, "--rtt", "10ms", "--bandwidth", "8mbit", "--split-only", "--sweep")
    assert result.exit_code == 0, result.output
    lines = result.stdout[result.stdout.index("switching points") :].splitlines()
    assert lines[0] == "switching points (neurosurgeon, RTT 10 ms, int8+zstd):"
    assert [line.split()[-3] if "(" in line else None for line in lines[1:]] and len(lines) >= 3
    assert re.search(r"3.33\d* Mbit/s", result.stdout)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--deadline", "soon"], "duration 'soon'"),
        (["--deadline", "0ms"], "deadline_ms must be a positive number, got 0.0"),
        (["--max-head-memory", "lots"], "memory size 'lots' is not a number"),
        (["--deadline", "5ms"], "over the 5 ms deadline"),
        (["--max-head-memory", "1kB"], "over the 1,000-byte limit"),
    ],
)
def test_bad_plan_options_are_named(profile_path: Path, args: list[str], fragment: str) -> None:
    result = plan(profile_path, *NET, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
