"""Fixtures of the secure-client tests: certificates of a development CA, and of another one."""

from __future__ import annotations

import pytest

from cloud_runtime.certs import DevCerts, write_dev_certs


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Certificates of a different CA: valid, but not trusted by a server of `dev_certs`."""
    return write_dev_certs(tmp_path_factory.mktemp("other-certs"))
