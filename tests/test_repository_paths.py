"""Nothing in the repository points outside it: no docs page, code, test or config names a path of
the machine it was written on, or a folder beside the clone. A fresh clone has neither; the data
a test or an example needs is shipped in the repository (experiment/examples/traces, ...)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(
    r"\.\./shared\b"  # the folder beside the clone
    r"|(?<![\w.])/(?:work|home|root|Users)/"  # a machine's home or work folders
    r"|(?<![\w.])/tmp/"  # a scratch folder (tests use tmp_path)
)


def _tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in listed.stdout.splitlines() if name != "tests/test_repository_paths.py"]


def test_no_file_points_outside_the_repository() -> None:
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files: ONNX models, images
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
