"""The edge sees the server's load: replies carry the queue wait and the expected wait, the device
prices its split choices with the observed server time, moves work deeper or home under overload,
and comes back when the load drops; a reply with nonsense times is ignored."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest

from cloud_runtime.batch_queue import BatchingConfig, ModelQueue
from edge_runtime.adaptive import AdaptiveController, AdaptiveSettings
from edge_runtime.server_load import ServerLoadEstimator
from protos.decisions import Choice, DecisionTable
from protos.splitinfer.v1 import inference_pb2 as pb

# A shallow cut with most of the model on the server, a deep one with little, and the device alone.
SHALLOW = Choice("shallow", "int8", head_ms=2.0, encode_ms=0.5, nbytes=2_000, decode_ms=0.2, tail_ms=10.0)
DEEP = Choice("deep", "int8", head_ms=15.0, encode_ms=0.5, nbytes=2_000, decode_ms=0.2, tail_ms=4.0)
DEVICE = Choice("output", "-", head_ms=45.0, encode_ms=0.0, nbytes=0, decode_ms=0.0, tail_ms=0.0, edge_only=True)
TABLE = DecisionTable((SHALLOW, DEEP, DEVICE), planning_rtt_ms=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _controller(clock: Clock) -> AdaptiveController:
    settings = AdaptiveSettings(margin=0.1, confirm=1, idle_probe_s=0, explore_s=1.0)
    return AdaptiveController(TABLE, settings, initial_bandwidth_bps=50e6, initial_rtt_ms=5.0, clock=clock)


def _reply(choice: Choice, queue_ms: float, tail_factor: float) -> pb.ServerTiming:
    tail_ms = choice.tail_ms * tail_factor
    return pb.ServerTiming(queue_ms=queue_ms, tail_ms=tail_ms, expected_wait_ms=queue_ms, total_ms=queue_ms + tail_ms)


def test_overload_moves_work_deeper_then_home_and_an_idle_server_brings_it_back() -> None:
    clock = Clock()
    controller = _controller(clock)
    assert controller.decide().choice == SHALLOW  # idle server: the profile's times
    # Big batches: every tail runs 3x its profiled time. The deep cut's small tail suffers least.
    for _ in range(8):
        controller.observe_server(_reply(SHALLOW, 0.0, 3.0), SHALLOW)
        clock.now += 0.1
        decision = controller.decide()
    assert decision.choice == DEEP
    # Overload: requests wait 40 ms in the queue, whatever the cut. Nothing sent beats the device.
    for _ in range(10):
        controller.observe_server(_reply(DEEP, 40.0, 3.0), DEEP)
        clock.now += 0.1
        decision = controller.decide()
    assert decision.choice == DEVICE
    # On the device nothing is sent, except an exploration every explore_s; its reply finds the
    # server idle again, and within a few of them the device offloads again.
    choices = []
    for _ in range(40):
        clock.now += 0.3
        decision = controller.decide()
        choices.append(decision.choice)
        if not decision.choice.edge_only:
            controller.observe_server(_reply(decision.choice, 0.0, 1.0), decision.choice)
    assert choices[-1] == SHALLOW and DEVICE in choices


def test_nonsense_times_are_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    estimator = ServerLoadEstimator()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.server_load"):
        for bad in (-5.0, math.nan, math.inf):
            estimator.observe(pb.ServerTiming(queue_ms=bad, tail_ms=4.0), DEEP)
            estimator.observe(pb.ServerTiming(queue_ms=1.0, tail_ms=4.0, expected_wait_ms=bad), DEEP)
    assert estimator.load.tail_factor == 1.0 and estimator.load.wait_ms == 0.0
    assert len([r for r in caplog.records if "ignoring a server timing" in r.message]) == 1
    estimator.observe(pb.ServerTiming(queue_ms=10.0, tail_ms=8.0), DEEP)
    assert estimator.load.wait_ms == pytest.approx(3.0) and estimator.load.tail_factor == pytest.approx(1.3)


def test_the_queue_says_how_long_a_request_arriving_now_would_wait() -> None:
    queue = ModelQueue("m", BatchingConfig(window_ms=0, max_batch=2))
    started, release = threading.Event(), threading.Event()

    def run(feed):
        started.set()
        release.wait(5)
        return [feed["x"]]

    def submit() -> None:
        queue.submit("t", run, {"x": np.zeros((1, 2), np.float32)}, batchable=True, deadline=None, describe="m")

    try:
        assert queue.expected_wait_s == 0.0
        callers = [threading.Thread(target=submit) for _ in range(3)]
        callers[0].start()
        assert started.wait(5)
        for caller in callers[1:]:
            caller.start()
        deadline = time.monotonic() + 5
        while queue.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # One batch running and two requests (one batch of max 2) queued: two batch times.
        assert queue.expected_wait_s == pytest.approx(2 * 0.01)  # the first guess of a batch's time
        release.set()
        for caller in callers:
            caller.join(5)
        assert queue.expected_wait_s == 0.0
    finally:
        release.set()
        queue.close()
