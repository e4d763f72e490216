"""The edge client's retries, against real servers on loopback: it sends a request again to a server
that is not there yet and after a full queue's refusal (by its hint), within the policy's bounds,
and the error says how many attempts it made; bad retry settings are refused by name."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from batched_bundles import batchable_bundle
from bundles import reference_output, tiny_input
from ports import free_port

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY, RetryPolicy, retry_wait, retryable
from protos.errors import ServerUnavailableError, SplitInferError
from protos.transport import RETRY_AFTER_KEY

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1)


def _check(result, seed: int = 0) -> None:
    np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(seed)), atol=1e-5, rtol=0)


def test_a_server_that_comes_up_during_the_retries_answers(tiny_bundle: Path) -> None:
    port = free_port()
    started: list[RunningServer] = []
    # Up 0.3 s after the first attempt; the retries span ~1.5 s.
    starter = threading.Timer(0.3, lambda: started.append(serve(ServerConfig([tiny_bundle], port=port))))
    retry = RetryPolicy(attempts=10, initial_backoff_s=0.1, max_backoff_s=0.3)
    try:
        with EdgeClient(tiny_bundle, f"127.0.0.1:{port}", EdgeConfig(retry=retry, timeout_s=5)) as client:
            starter.start()
            result = client.infer(tiny_input())
    finally:
        starter.join()
        for running in started:
            running.stop(0)
    assert result.attempts > 1 and not result.fallback
    _check(result)


def test_retries_are_bounded_and_the_error_says_how_many(tiny_bundle: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with EdgeClient(tiny_bundle, address, EdgeConfig(retry=FAST_RETRY)) as client:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=rf"server {address}: UNAVAILABLE: .* \(after 4 attempts\)"):
            client.infer(tiny_input())
        assert time.monotonic() - start < 2.0
    with EdgeClient(tiny_bundle, address, EdgeConfig(retry=NO_RETRY)) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            client.infer(tiny_input())
        assert "attempts" not in str(caught.value)


def test_a_full_queue_is_retried_after_the_servers_hint(tmp_path: Path) -> None:
    bundle = batchable_bundle(tmp_path / "b")
    config = BatchingConfig(window_ms=200, max_batch=8, max_queue=1, fixed_window=True)
    with serve(ServerConfig([bundle], batching=config)) as running:
        edge_config = EdgeConfig(retry=RetryPolicy(attempts=20, initial_backoff_s=0.01))
        with EdgeClient(bundle, running.address, edge_config) as client:
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


class _Refusal(grpc.RpcError):
    """A refusal as gRPC raises it: a code, its words and the trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize(
    ("refusal", "retried"),
    [
        (_Refusal(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), True),
        (_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", ((RETRY_AFTER_KEY, "20"),)), True),
        # gRPC's own limit on concurrent calls (the server's maximum_concurrent_rpcs): no hint.
        (_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"), True),
        (_Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)"), False),
        (
            _Refusal(grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: ... CERTIFICATE_VERIFY_FAILED"),
            False,
        ),
        (_Refusal(grpc.StatusCode.INVALID_ARGUMENT, "bad tensor"), False),
        (_Refusal(grpc.StatusCode.UNAUTHENTICATED, "no token"), False),
    ],
    ids=["unavailable", "queue-full", "call-limit", "too-large", "certificate", "invalid", "unauthenticated"],
)
def test_only_refusals_a_retry_can_mend_are_retried(refusal: _Refusal, retried: bool) -> None:
    assert retryable(refusal) is retried
    wait = retry_wait(refusal, FAST_RETRY, 1, time.monotonic(), random.Random(0))
    assert (wait is not None) is retried


def test_no_retry_starts_that_would_end_after_the_deadline() -> None:
    refusal = _Refusal(grpc.StatusCode.UNAVAILABLE, "down")
    now = time.monotonic()
    assert retry_wait(refusal, FAST_RETRY, 1, now, random.Random(0), deadline=now + 5) is not None
    assert retry_wait(refusal, FAST_RETRY, 1, now, random.Random(0), deadline=now + 0.001) is None
