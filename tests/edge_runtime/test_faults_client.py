"""The edge client under faults, against real servers on loopback: it retries a server that is not
there yet and a full queue's refusal (by its hint), falls back to the tail on the device when the
server stays gone (and says so), returns to split mode once the server is back, and never hides a
refusal of the request itself."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from batched_bundles import batchable_bundle
from bundles import build_bundle, reference_output, tiny_input

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.client import NO_RETRY, EdgeClient, RetryPolicy
from protos.errors import BundleMismatchError, ServerUnavailableError, SplitInferError

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check(result, seed: int = 0) -> None:
    np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)


def test_a_server_that_comes_up_during_the_retries_answers(tiny_bundle: Path) -> None:
    port = _free_port()
    started: list[RunningServer] = []
    # Up 0.3 s after the first attempt; the retries span ~1.5 s.
    starter = threading.Timer(0.3, lambda: started.append(serve(ServerConfig([tiny_bundle], port=port))))
    retry = RetryPolicy(attempts=10, initial_backoff_s=0.1, max_backoff_s=0.3)
    try:
        with EdgeClient(tiny_bundle, f"127.0.0.1:{port}", retry=retry, timeout_s=5) as client:
            starter.start()
            result = client.infer(tiny_input())
    finally:
        starter.join()
        for running in started:
            running.stop(0)
    assert result.attempts > 1 and not result.fallback
    _check(result)


def test_retries_are_bounded_and_the_error_says_how_many(tiny_bundle: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with EdgeClient(tiny_bundle, address, retry=FAST_RETRY) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=rf"server {address}: UNAVAILABLE: .* \(after 4 attempts\)"):
            client.infer(tiny_input())
        assert time.monotonic() - start < 2.0
    with EdgeClient(tiny_bundle, address, retry=NO_RETRY) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            client.infer(tiny_input())
        assert "attempts" not in str(caught.value)


def test_a_full_queue_is_retried_after_the_servers_hint(tmp_path: Path) -> None:
    bundle = batchable_bundle(tmp_path / "b")
    config = BatchingConfig(window_ms=200, max_batch=8, max_queue=1)
    with serve(ServerConfig([bundle], batching=config)) as running:
        with EdgeClient(bundle, running.address, retry=RetryPolicy(attempts=20, initial_backoff_s=0.01)) as client:
            barrier = threading.Barrier(3)

            def one(seed: int):
                barrier.wait()
                return client.infer(tiny_input(seed))

            results: dict[int, object] = {}
            threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, one(s))) for s in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    assert sorted(results) == [0, 1, 2]
    assert max(r.attempts for r in results.values()) > 1  # type: ignore[attr-defined]
    for seed, result in results.items():
        _check(result, seed)


def test_the_tail_runs_here_while_the_server_is_gone_and_split_mode_returns(tiny_bundle: Path) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    with EdgeClient(tiny_bundle, address, retry=FAST_RETRY, fallback=True, probe_interval_s=0.2) as client:
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
    with EdgeClient(other, tiny_server, fallback=True) as client:
        with pytest.raises(BundleMismatchError):
            client.infer(tiny_input())
        assert not client.in_fallback


def test_without_fallback_an_unreachable_server_is_an_error(tiny_bundle: Path) -> None:
    with EdgeClient(tiny_bundle, f"127.0.0.1:{_free_port()}", retry=NO_RETRY) as client:
        with pytest.raises(ServerUnavailableError):
            client.infer(tiny_input())
        assert not client.in_fallback


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attempts": 0}, "retry attempts 0 is not between 1 and 100"),
        ({"initial_backoff_s": -1.0}, "retry initial_backoff_s -1.0 is not a finite number ≥ 0"),
        ({"max_elapsed_s": float("inf")}, "retry max_elapsed_s inf is not a finite number ≥ 0"),
        ({"multiplier": 0.5}, "retry multiplier 0.5 is not a finite number ≥ 1"),
    ],
)
def test_bad_retry_settings_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        RetryPolicy(**options)
