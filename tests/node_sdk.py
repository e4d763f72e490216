"""Where the TypeScript edge SDK lives and what its tests need (tests/web): node, npm and the SDK's
packages, skipped with the reason when absent (make test installs them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "edge_runtime" / "web"


def needs_node() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (make test installs them on Debian as root)")
    if not (WEB / "node_modules" / ".package-lock.json").is_file():
        pytest.skip("the SDK's npm packages are not installed: run `make web`")
