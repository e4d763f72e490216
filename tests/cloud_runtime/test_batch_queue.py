"""Dynamic batching and backpressure: requests for the same tail within the window run as one batch
and each gets its own rows; a failed batch fails every request in it; a request whose deadline
passes in the queue is dropped; a full queue refuses with a retry hint; a tail that cannot batch
runs one request at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from batched_bundles import batchable_bundle
from bundles import build_bundle, loosen_cut, reference_output, request_for, tiny_input

from cloud_runtime.batch_queue import BatchingConfig, DeadlineExceededError, ModelQueue, QueueFullError
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from cloud_runtime.tails import TailRunError, TailService
from protos.bundle import Bundle, load_bundle
from protos.errors import BundleMismatchError, ServerUnavailableError, SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.transport import RETRY_AFTER_KEY


class Recorder:
    """A BatchObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.depths: list[int] = []

    def batch_ran(self, model_id: str, size: int) -> None:
        self.sizes.append(size)

    def queue_depth(self, model_id: str, depth: int) -> None:
        self.depths.append(depth)


@pytest.fixture(scope="module")
def batch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return batchable_bundle(tmp_path_factory.mktemp("batchable"))


def _logits(response: pb.InferResponse) -> np.ndarray:
    return np.frombuffer(response.outputs[0].data, "<f4").reshape(1, 4)


def _together(call: Callable[[int], object], n: int) -> list[object]:
    """call(0..n-1) on n threads at once; each result, or the exception it raised."""
    barrier = threading.Barrier(n)

    def one(i: int) -> object:
        barrier.wait()
        try:
            return call(i)
        except Exception as err:
            return err

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_burst_runs_as_one_batch_and_each_gets_its_rows(batch_bundle: Bundle) -> None:
    recorder = Recorder()
    tails = TailService(
        [batch_bundle], threads=1, batching=BatchingConfig(window_ms=500, max_batch=4), observer=recorder
    )
    try:
        # The first burst teaches the queue that requests come close together; the second, 20 ms
        # later, waits for its last member and runs as one batch without waiting out the window.
        first = [request_for(batch_bundle, tiny_input(i), request_id=f"a{i}") for i in range(4)]
        _together(lambda i: tails.infer(first[i]), 4)
        time.sleep(0.02)
        requests = [request_for(batch_bundle, tiny_input(i), request_id=f"r{i}") for i in range(4)]
        start = time.monotonic()
        responses = _together(lambda i: tails.infer(requests[i]), 4)
        waited_s = time.monotonic() - start
    finally:
        tails.close()
    assert recorder.sizes[-1] == 4 and sum(recorder.sizes) == 8
    assert waited_s < 0.4  # a full batch runs at once, not at the end of the 500 ms window
    for i, response in enumerate(responses):
        assert isinstance(response, pb.InferResponse), response
        assert response.request_id == f"r{i}"
        np.testing.assert_allclose(_logits(response), reference_output(tiny_input(i)), atol=1e-5, rtol=0)


def test_a_fixed_window_makes_even_a_lone_request_wait_it_out(batch_bundle: Bundle) -> None:
    recorder = Recorder()
    batching = BatchingConfig(window_ms=100, max_batch=8, fixed_window=True)
    tails = TailService([batch_bundle], threads=1, batching=batching, observer=recorder)
    try:
        start = time.monotonic()
        tails.infer(request_for(batch_bundle, tiny_input()))
        waited_s = time.monotonic() - start
    finally:
        tails.close()
    assert recorder.sizes == [1]
    assert 0.09 <= waited_s < 2.0


def test_a_lone_request_at_an_idle_tail_runs_at_once(batch_bundle: Bundle) -> None:
    recorder = Recorder()
    tails = TailService(
        [batch_bundle], threads=1, batching=BatchingConfig(window_ms=100, max_batch=8), observer=recorder
    )
    try:
        waits = []
        # Requests further apart than the window: none can expect company, none waits for it.
        for i in range(3):
            start = time.monotonic()
            tails.infer(request_for(batch_bundle, tiny_input(i)))
            waits.append(time.monotonic() - start)
            time.sleep(0.15)
    finally:
        tails.close()
    assert recorder.sizes == [1, 1, 1]
    assert max(waits) < 0.05, waits


def test_a_lone_request_runs_in_its_callers_thread_and_a_busy_tail_queues_the_next() -> None:
    queue = ModelQueue("m", BatchingConfig(window_ms=50, max_batch=8))
    ran_in: list[str] = []
    started, release = threading.Event(), threading.Event()

    def run(feed):
        ran_in.append(threading.current_thread().name)
        if feed["x"][0, 0] == 1:  # the first request holds the tail until released
            started.set()
            release.wait(5)
        return [feed["x"]]

    def submit(value: float) -> object:
        feed = {"x": np.full((1, 2), value, np.float32)}
        return queue.submit("tail", run, feed, batchable=True, deadline=None, describe="model 'm'")

    try:
        first = threading.Thread(target=submit, args=(1.0,), name="caller-1")
        first.start()
        assert started.wait(5)
        # The tail is busy: the next request waits in the queue, for the queue's thread to run.
        second = threading.Thread(target=submit, args=(2.0,), name="caller-2")
        second.start()
        deadline = time.monotonic() + 5
        while queue.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran_in == ["caller-1"] and queue.depth == 1
        release.set()
        first.join(5)
        second.join(5)
    finally:
        queue.close()
    assert ran_in == ["caller-1", "batcher-m"]


def test_a_tail_that_cannot_batch_runs_one_request_at_a_time(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert not bundle.manifest.batchable  # written before batching, or failed the export's check
    recorder = Recorder()
    tails = TailService([bundle], threads=1, batching=BatchingConfig(window_ms=200, max_batch=8), observer=recorder)
    try:
        requests = [request_for(bundle, tiny_input(i)) for i in range(4)]
        responses = _together(lambda i: tails.infer(requests[i]), 4)
    finally:
        tails.close()
    assert recorder.sizes == [1, 1, 1, 1]
    for i, response in enumerate(responses):
        np.testing.assert_allclose(_logits(response), reference_output(tiny_input(i)), atol=1e-5, rtol=0)  # type: ignore[arg-type]


def test_every_request_in_a_failed_batch_gets_the_error(tmp_path: Path) -> None:
    # The loosened cut admits 16x16 tensors that the tail (8x8) then refuses: the whole batch fails.
    bundle = loosen_cut(batchable_bundle(tmp_path / "loose"))
    bad = pb.InferRequest(model_id="tiny", bundle_hash=bundle.manifest.bundle_hash)
    bad.tensors.add(
        name="act",
        dtype=pb.DTYPE_FLOAT32,
        shape=[1, 4, 16, 16],
        encoding=pb.ENCODING_RAW,
        compression=pb.COMPRESSION_NONE,
        data=bytes(4 * 4 * 16 * 16),
    )
    recorder = Recorder()
    batching = BatchingConfig(window_ms=500, max_batch=3, fixed_window=True)
    tails = TailService([bundle], threads=1, batching=batching, observer=recorder)
    try:
        outcomes = _together(lambda i: tails.infer(bad), 3)
    finally:
        tails.close()
    assert recorder.sizes == []  # counted only when a batch ran
    for outcome in outcomes:
        assert isinstance(outcome, TailRunError)
        assert "the tail failed on a batch of 3 row(s)" in str(outcome)


def test_each_request_of_a_failed_batch_gets_its_own_status(tmp_path: Path) -> None:
    bundle = loosen_cut(batchable_bundle(tmp_path / "loose"))
    bad = pb.InferRequest(model_id="tiny", bundle_hash=bundle.manifest.bundle_hash)
    bad.tensors.add(
        name="act",
        dtype=pb.DTYPE_FLOAT32,
        shape=[1, 4, 16, 16],
        encoding=pb.ENCODING_RAW,
        compression=pb.COMPRESSION_NONE,
        data=bytes(4 * 4 * 16 * 16),
    )
    config = ServerConfig([bundle], batching=BatchingConfig(window_ms=500, max_batch=3, fixed_window=True))
    with serve(config) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        outcomes = _together(lambda i: stub.Infer(bad, timeout=30), 3)
    for outcome in outcomes:
        assert isinstance(outcome, grpc.RpcError)
        assert outcome.code() == grpc.StatusCode.INTERNAL
        assert "the tail failed on a batch of 3 row(s)" in outcome.details()


def test_a_request_whose_deadline_passes_in_the_queue_is_dropped(batch_bundle: Bundle) -> None:
    recorder = Recorder()
    batching = BatchingConfig(window_ms=300, max_batch=8, fixed_window=True)
    tails = TailService([batch_bundle], threads=1, batching=batching, observer=recorder)
    request = request_for(batch_bundle, tiny_input())
    try:
        # Both wait for the window; the one with 50 ms to live is dropped when the batch forms.
        outcomes = _together(lambda i: tails.infer(request, deadline=time.monotonic() + 0.05 if i == 0 else None), 2)
    finally:
        tails.close()
    assert isinstance(outcomes[0], DeadlineExceededError)
    assert "before running the tail" in str(outcomes[0]) and "dropped, its tail not run" in str(outcomes[0])
    assert isinstance(outcomes[1], pb.InferResponse)
    assert recorder.sizes == [1]


def test_a_full_queue_refuses_at_once_with_a_retry_hint(batch_bundle: Bundle) -> None:
    batching = BatchingConfig(window_ms=400, max_batch=8, max_queue=2, fixed_window=True)
    tails = TailService([batch_bundle], threads=1, batching=batching)
    request = request_for(batch_bundle, tiny_input())
    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(tails.infer, request) for _ in range(2)]
            deadline = time.monotonic() + 5
            while tails.queue_depth("tiny") < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            start = time.monotonic()
            with pytest.raises(
                QueueFullError, match=r"model 'tiny': 2 requests are already queued \(max queue 2\); retry after \d+ ms"
            ) as caught:
                tails.infer(request)
            assert time.monotonic() - start < 0.1
            assert caught.value.retry_after_ms >= 1
            assert caught.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert all(isinstance(f.result(), pb.InferResponse) for f in waiting)  # the queued ones still run
    finally:
        tails.close()


def test_the_server_sends_the_retry_hint_as_trailing_metadata(batch_bundle: Bundle, scrape: Callable) -> None:
    config = BatchingConfig(window_ms=400, max_batch=8, max_queue=2, fixed_window=True)
    request = request_for(batch_bundle, tiny_input())
    server_config = ServerConfig([batch_bundle], batching=config, metrics_port=0)
    with serve(server_config) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        outcomes = _together(lambda i: stub.Infer(request, timeout=30), 3)
        metrics = scrape(running.metrics_port)
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(refused) == 1, outcomes
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after" in refused[0].details()
    hint = dict(refused[0].trailing_metadata())[RETRY_AFTER_KEY]
    assert int(hint) >= 1
    assert metrics("splitinfer_requests_total", model="tiny", code="RESOURCE_EXHAUSTED", client="anonymous") == 1
    # The other two ran as one batch, and the queue is empty again.
    assert metrics("splitinfer_batch_size_count", model="tiny") == 1
    assert metrics("splitinfer_batch_size_sum", model="tiny") == 2
    assert metrics("splitinfer_queue_depth", model="tiny") == 0


def test_batches_through_the_server_are_counted_by_size(batch_bundle: Bundle, scrape: Callable) -> None:
    config = BatchingConfig(window_ms=300, max_batch=4)
    requests = [request_for(batch_bundle, tiny_input(i), request_id=f"r{i}") for i in range(8)]
    server_config = ServerConfig([batch_bundle], batching=config, metrics_port=0)
    with serve(server_config) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        responses = _together(lambda i: stub.Infer(requests[i], timeout=30), 8)
        metrics = scrape(running.metrics_port)
    for i, response in enumerate(responses):
        assert isinstance(response, pb.InferResponse), response
        np.testing.assert_allclose(_logits(response), reference_output(tiny_input(i)), atol=1e-5, rtol=0)
    assert metrics("splitinfer_batch_size_sum", model="tiny") == 8
    assert metrics("splitinfer_batch_size_bucket", model="tiny", le="4.0") == metrics(
        "splitinfer_batch_size_count", model="tiny"
    )
    assert 2 <= metrics("splitinfer_batch_size_count", model="tiny") <= 4


def test_a_batch_given_by_the_caller_shares_tail_calls_and_answers_each_request(
    batch_bundle: Bundle, tmp_path: Path
) -> None:
    # The path Ray Serve takes: the caller batched, TailService checks each request, runs those
    # that can share a call together and answers a refused one alone, in the order given.
    plain = build_bundle(tmp_path / "plain", model_id="plain")
    tails = TailService([batch_bundle, plain], threads=1)
    foreign = request_for(build_bundle(tmp_path / "other", seed=1), tiny_input(9), request_id="foreign")
    requests = [
        request_for(batch_bundle, tiny_input(0), request_id="a0"),
        foreign,
        request_for(plain, tiny_input(1), request_id="p1"),
        request_for(batch_bundle, tiny_input(2), request_id="a2"),
        request_for(plain, tiny_input(3), request_id="p3"),
    ]
    try:
        outcomes = tails.infer_batch(requests)
    finally:
        tails.close()
    assert isinstance(outcomes[1], BundleMismatchError) and "model 'tiny'" in str(outcomes[1])
    answered = {o.request_id: o for o in outcomes if isinstance(o, pb.InferResponse)}
    assert [o.request_id for o in outcomes if isinstance(o, pb.InferResponse)] == ["a0", "p1", "a2", "p3"]
    for request_id, seed in (("a0", 0), ("p1", 1), ("a2", 2), ("p3", 3)):
        np.testing.assert_allclose(_logits(answered[request_id]), reference_output(tiny_input(seed)), atol=1e-5, rtol=0)
    # The batchable tail ran once for both of its requests; the other tail once per request.
    assert answered["a0"].timing.tail_ms == answered["a2"].timing.tail_ms
    assert answered["p1"].timing.tail_ms != answered["p3"].timing.tail_ms


def test_close_answers_the_requests_still_queued(batch_bundle: Bundle) -> None:
    tails = TailService(
        [batch_bundle], threads=1, batching=BatchingConfig(window_ms=5000, max_batch=8, fixed_window=True)
    )
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(tails.infer, request_for(batch_bundle, tiny_input()))
        deadline = time.monotonic() + 5
        while tails.queue_depth("tiny") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        tails.close()
        with pytest.raises(ServerUnavailableError, match="shutting down"):
            waiting.result(timeout=5)
    with pytest.raises(ServerUnavailableError, match="shutting down"):
        tails.infer(request_for(batch_bundle, tiny_input()))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window_ms": -1.0}, "batch window -1.0 ms is not between 0 and 10000"),
        ({"window_ms": float("nan")}, "batch window nan ms"),
        ({"max_batch": 0}, "max batch 0 is not between 1 and 4096"),
        ({"max_queue": 0}, "max queue 0 is not between 1 and 65536"),
    ],
)
def test_bad_batching_settings_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BatchingConfig(**options)
