"""Racing the server with the device's own run (EdgeClient race_local), for real: onnxruntime on
both sides, a real server on loopback, netemu's user-space link where the link must be slow."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from bundles import reference_output, tiny_input
from multicut import multi_input, multi_reference
from ports import free_port

from edge_runtime.adaptive import AdaptiveSettings
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.estimator import LinkEstimator
from edge_runtime.head import SegmentedHead
from edge_runtime.local_tail import Cancel, Cancelled, LocalTail
from edge_runtime.race import DEVICE, SERVER
from netemu import LinkEmulator, Shape
from protos.bundle import load_multi_cut_bundle
from protos.errors import UnknownModelError

CUTS = ["input", "a", "b", "c", "pooled"]
NO_PROBE = AdaptiveSettings(idle_probe_s=0)


class SlowLocalTail:
    """The real local run, then `seconds` more unless cancelled: a device slower than the server."""

    def __init__(self, tail: LocalTail, seconds: float) -> None:
        self._tail = tail
        self._seconds = seconds
        self.runs: list[tuple[bool, float]] = []  # (stopped by a cancel, seconds the run took)

    def run(self, tensors: Mapping[str, np.ndarray], cut: str, cancel: Cancel | None = None) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self._tail.run(tensors, cut, cancel)
        stopped = cancel is not None and cancel.wait(self._seconds)
        self.runs.append((stopped, time.perf_counter() - started))
        if stopped:
            raise Cancelled(f"cut {cut!r}: stopped")
        return outputs


def _slow_client(path: Path, address: str, config: EdgeConfig, seconds: float) -> tuple[EdgeClient, SlowLocalTail]:
    """A client of the multi-cut bundle at `path` whose local run is a SlowLocalTail, given to its constructor."""
    bundle = load_multi_cut_bundle(path)
    head = SegmentedHead(bundle)
    slow = SlowLocalTail(LocalTail(bundle, head), seconds)
    return EdgeClient(bundle, address, config, head=head, local_tail=slow), slow


def test_the_rest_of_the_model_from_every_cut_is_the_unsplit_model(multi_bundle: Path) -> None:
    bundle = load_multi_cut_bundle(multi_bundle)
    head = SegmentedHead(bundle)
    tail = LocalTail(bundle, head)
    # The bundle carries the all-on-device cut: its segments are the whole model, no tail.onnx loaded.
    assert tail.source == "segments"
    x = multi_input(5)
    for cut in CUTS:
        outputs = tail.run(head.run({"x": x}, cut), cut)
        np.testing.assert_allclose(outputs["logits"], multi_reference(x), rtol=0, atol=1e-6)


def test_a_cancelled_local_run_raises_cancelled(multi_bundle: Path) -> None:
    bundle = load_multi_cut_bundle(multi_bundle)
    head = SegmentedHead(bundle)
    cancel = Cancel()
    cancel.cancel()
    with pytest.raises(Cancelled, match="'a' was stopped"):
        LocalTail(bundle, head).run(head.run({"x": multi_input(0)}, "a"), "a", cancel)


def test_a_fast_server_wins_and_the_local_run_is_stopped(multi_bundle: Path, multi_server: str) -> None:
    client, slow = _slow_client(multi_bundle, multi_server, EdgeConfig(adaptive=NO_PROBE, race_local=True), seconds=5.0)
    with client:
        client.adaptive.pin("a", "fp32")
        for i in range(3):
            result = client.infer(multi_input(i))
            assert (result.raced, result.winner, result.fallback) == (True, SERVER, False)
            np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(i)), rtol=0, atol=1e-6)
            assert result.timing.server_ms > 0 and result.response_bytes > 0
    # Each local run was stopped as soon as the server answered, not left to run its 5 s.
    assert [stopped for stopped, _ in slow.runs] == [True] * 3
    assert max(took for _, took in slow.runs) < 2.0


def test_on_a_slow_link_the_device_answers_and_the_link_estimate_drops(multi_bundle: Path, multi_server: str) -> None:
    # Cut `a` in fp32 sends 32 KiB: 1.3 s at 200 kbit/s, against 0.3 s for the rest of the model here.
    up = Shape(rate_bps=200e3, delay_ms=5)
    with LinkEmulator(multi_server, up, Shape(delay_ms=5)) as link:
        edge_config = EdgeConfig(adaptive=NO_PROBE, race_local=True, initial_bandwidth_bps=50e6, initial_rtt_ms=10)
        client, _ = _slow_client(multi_bundle, link.address, edge_config, seconds=0.3)
        with client:
            client.adaptive.pin("a", "fp32")
            client.adaptive.estimator.observe_rtt(0.010)
            started = time.perf_counter()
            result = client.infer(multi_input(1))
            took_s = time.perf_counter() - started
            estimate = client.adaptive.estimator.estimate()
    assert (result.raced, result.winner, result.fallback) == (True, DEVICE, False)
    assert took_s < 0.8
    # The device's own answer: the head's tensors, no codec in between.
    np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(1)), rtol=0, atol=1e-6)
    assert result.bytes_sent > 0 and result.response_bytes == 0 and result.timing.network_ms == 0
    # The cancelled request says the link is at most its bits over the ~0.3 s they had (~0.9 Mbit/s).
    assert estimate.bandwidth_bps is not None and estimate.bandwidth_bps < 1.2e6


def test_where_the_table_runs_everything_here_a_raced_request_is_still_sent(
    multi_bundle: Path, multi_server: str
) -> None:
    # At 1 kbit/s the table's best is all on the device; racing sends the best split entry anyway.
    edge_config = EdgeConfig(adaptive=NO_PROBE, race_local=True, initial_bandwidth_bps=1e3, initial_rtt_ms=10)
    with EdgeClient(multi_bundle, multi_server, edge_config) as client:
        result = client.infer(multi_input(2))
        decided = client.adaptive.table.best(1e3, 10.0)
    assert decided.edge_only
    assert result.raced and result.cut == "pooled" and result.bytes_sent > 0
    np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(2)), rtol=0, atol=1e-6)


def test_a_server_that_is_gone_is_answered_by_the_local_run(multi_bundle: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    edge_config = EdgeConfig(adaptive=NO_PROBE, race_local=True, timeout_s=5)
    client, _ = _slow_client(multi_bundle, address, edge_config, seconds=0.2)
    with client:
        client.adaptive.pin("b", "fp32")
        result = client.infer(multi_input(3))
    assert (result.raced, result.winner, result.fallback) == (True, DEVICE, True)
    assert "UNAVAILABLE" in result.fallback_reason
    np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(3)), rtol=0, atol=1e-6)


def test_a_refused_request_is_not_hidden_by_the_race(multi_bundle: Path, tiny_server: str) -> None:
    # This server does not hold the multi-cut model: a refusal of the request itself, never hidden.
    client, slow = _slow_client(multi_bundle, tiny_server, EdgeConfig(adaptive=NO_PROBE, race_local=True), seconds=5.0)
    with client:
        client.adaptive.pin("a", "fp32")
        with pytest.raises(UnknownModelError, match="NOT_FOUND"):
            client.infer(multi_input(0))
    assert slow.runs and slow.runs[0][0]


def test_a_single_cut_bundle_races_with_its_tail(tiny_bundle: Path, tiny_server: str) -> None:
    with EdgeClient(tiny_bundle, tiny_server, EdgeConfig(race_local=True)) as client:
        assert client.local_tail.source == "tail.onnx"
        results = [client.infer(tiny_input(i)) for i in range(4)]
    for i, result in enumerate(results):
        assert result.raced and result.winner in (SERVER, DEVICE)
        np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input(i)), rtol=0, atol=1e-5)


def test_concurrent_raced_requests_each_get_their_own_answer(multi_bundle: Path, multi_server: str) -> None:
    with EdgeClient(multi_bundle, multi_server, EdgeConfig(adaptive=NO_PROBE, race_local=True)) as client:
        client.adaptive.pin("c", "fp32")
        answers: dict[int, np.ndarray] = {}

        def ask(i: int) -> None:
            answers[i] = client.infer(multi_input(i)).outputs["logits"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert sorted(answers) == list(range(8))
    for i, logits in answers.items():
        np.testing.assert_allclose(logits, multi_reference(multi_input(i)), rtol=0, atol=1e-6)


def test_a_ceiling_lowers_a_higher_estimate_in_time_order() -> None:
    now = [0.0]
    estimator = LinkEstimator(clock=lambda: now[0])
    estimator.observe_rtt(0.050)
    # 100 kB in 0.45 s, 0.05 s server and 0.05 s round trip: 0.35 s of transfer.
    estimator.observe_transfer(100_000, 0.45, 0.05)
    timed = 800_000 / 0.35
    now[0] += 0.1
    # Not there after 1.1 s, of which 0.05 s server and 0.05 s round trip: at most 800 kbit/s.
    estimator.observe_unfinished(100_000, 1.1, 0.05)
    assert estimator.estimate().bandwidth_bps == pytest.approx(800_000 / 1.0)
    # A later small request that crossed fast raises it again, though never above what the link
    # has delivered; a newer timed transfer overrules both.
    now[0] += 0.1
    estimator.observe_transfer(1000, 0.1002, 0.05)
    assert estimator.estimate().bandwidth_bps == pytest.approx(min(8000 / (0.0002 + estimator.resolution_s), timed))
    assert estimator.estimate().bandwidth_bps > 800_000
    now[0] += 0.1
    estimator.observe_transfer(100_000, 0.45, 0.05)
    assert estimator.estimate().bandwidth_bps == pytest.approx(timed)
    # A ceiling above the estimate says nothing new; one without room for a transfer is no ceiling.
    estimator.observe_unfinished(100_000, 0.2, 0.05)
    estimator.observe_unfinished(100_000, 0.09, 0.05)
    assert estimator.estimate().bandwidth_bps == pytest.approx(timed)
