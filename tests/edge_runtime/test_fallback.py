"""The edge client's fallback, against real servers on loopback: it runs the tail on the device when
the server stays gone (and says so), returns to split mode once the server is back, and never hides
a refusal of the request itself."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from bundles import build_bundle, reference_output, tiny_input
from ports import free_port

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY, RetryPolicy
from protos.errors import BundleMismatchError, ServerUnavailableError

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1)


def _check(result, seed: int = 0) -> None:
    np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)


def test_the_tail_runs_here_while_the_server_is_gone_and_split_mode_returns(tiny_bundle: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with EdgeClient(tiny_bundle, address, EdgeConfig(retry=FAST_RETRY, fallback=True, probe_interval_s=0.2)) as client:
        first = client.infer(tiny_input())
        assert first.fallback and client.in_fallback
        assert first.fallback_reason.startswith(f"server {address}: UNAVAILABLE") and first.attempts == 4
        assert first.bytes_sent == 0 and first.timing.network_ms == 0 and first.timing.tail_ms > 0
        _check(first)
        # Until the probe interval passes, requests run here without asking the server.
        second = client.infer(tiny_input(1))
        assert second.fallback and second.attempts == 0
        _check(second, 1)
        with serve(ServerConfig([tiny_bundle], port=port)):
            deadline = time.monotonic() + 10
            results = []
            while time.monotonic() < deadline:
                results.append(client.infer(tiny_input(2)))
                if not results[-1].fallback:
                    break
                time.sleep(0.05)
            assert not results[-1].fallback and not client.in_fallback
            assert results[-1].bytes_sent > 0
            for result in results:
                _check(result, 2)


def test_a_refusal_of_the_request_is_never_hidden_by_the_fallback(tmp_path: Path, tiny_server: str) -> None:
    # Same model, other weights: the server holds a different tail.
    other = build_bundle(tmp_path / "other", seed=1)
    with EdgeClient(other, tiny_server, EdgeConfig(fallback=True)) as client:
        with pytest.raises(BundleMismatchError):
            client.infer(tiny_input())
        assert not client.in_fallback


def test_without_fallback_an_unreachable_server_is_an_error(tiny_bundle: Path) -> None:
    with EdgeClient(tiny_bundle, f"127.0.0.1:{free_port()}", EdgeConfig(retry=NO_RETRY)) as client:
        with pytest.raises(ServerUnavailableError):
            client.infer(tiny_input())
        assert not client.in_fallback
