"""What the emulator's tests share: a measuring endpoint on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netemu.selftest import Endpoint


@pytest.fixture()
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as running:
        yield running
