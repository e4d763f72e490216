"""Fixtures of the edge tests: certificates of a development CA, and of another one (the secure
client); the multi-cut bundle of tests/multicut.py and a real server for it (adaptive, racing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from multicut import build_multi_cut

from cloud_runtime.certs import DevCerts, write_dev_certs
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve


@pytest.fixture(scope="session")
def multi_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_multi_cut(tmp_path_factory.mktemp("multi")).path


@pytest.fixture(scope="session")
def multi_server(multi_bundle: Path) -> Iterator[str]:
    with serve(ServerConfig([multi_bundle], threads=1, max_workers=4)) as running:
        yield running.address


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Certificates of a different CA: valid, but not trusted by a server of `dev_certs`."""
    return write_dev_certs(tmp_path_factory.mktemp("other-certs"))
