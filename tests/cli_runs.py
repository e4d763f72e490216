"""Running the command line in-process as a user would, and what a refusal must look like: exit
code 2 and one line on stderr naming the problem, nothing on stdout, no traceback."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from splitinfer.app import app

runner = CliRunner()

# Lines `serve` logs before it refuses (its bundles loaded, say): records, not the refusal.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def cli(*args: str | Path, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.stdout


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2 and one line on stderr naming the problem; no traceback, nothing on stdout."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]
