"""Fixtures of the server's operations and security tests: dev certificates, a tokens file, and a
reader of a server's /metrics."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_runtime.certs import DevCerts, write_dev_certs

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Certificates of a different CA: valid, but not trusted by a server of `dev_certs`."""
    return write_dev_certs(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="session")
def tokens() -> dict[str, str]:
    """client id → token, as in `tokens_file`."""
    return dict(TOKENS)


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text("# client-id token\n" + "".join(f"{client} {token}\n" for client, token in TOKENS.items()))
    return path


class Scrape:
    """Every sample of http://127.0.0.1:port/metrics, read once; `scrape(name, **labels)` is one
    sample's value, 0 when the server has not recorded it (a labelled counter appears on first use)."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            self.text = reply.read().decode()
        self.samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(self.text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def scrape() -> Callable[[int], Scrape]:
    return Scrape


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that run `splitinfer serve` in-process: it configures the process's logging,
    here pytest's; put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
