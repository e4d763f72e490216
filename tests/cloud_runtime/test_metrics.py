"""Prometheus metrics, scraped over HTTP after real requests and parsed with prometheus-client's
own parser: counts by model and code, stage histograms, bytes, in-flight, one registry per server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import request_for, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.metrics import STAGES
from cloud_runtime.metrics_endpoint import MAX_SCRAPERS
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from protos.bundle import load_bundle
from protos.errors import ServerUnavailableError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc


def test_metrics_count_requests_by_model_and_code_with_stage_times_and_bytes(
    tiny_bundle: Path, dag_bundle: Path, scrape: Callable
) -> None:
    tiny, dag = load_bundle(tiny_bundle), load_bundle(dag_bundle)
    with serve(ServerConfig([tiny_bundle, dag_bundle], metrics_port=0)) as running:
        assert running.metrics_port not in (None, running.port)
        with EdgeClient(tiny_bundle, running.address) as client:
            results = [client.infer(tiny_input(i)) for i in range(2)]
            results += list(client.infer_stream([tiny_input(2)]))
        with EdgeClient(dag_bundle, running.address) as client:
            dag_result = client.infer(tiny_input())
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.SplitInferenceStub(channel)
            for model_id, bundle_hash in [("no-such-model", tiny.manifest.bundle_hash), ("tiny", "0" * 64)]:
                bad = request_for(tiny, tiny_input())
                bad.model_id, bad.bundle_hash = model_id, bundle_hash
                with pytest.raises(grpc.RpcError):
                    stub.Infer(bad, timeout=5)
        m = scrape(running.metrics_port)

    requests = "splitinfer_requests_total"
    assert m(requests, model="tiny", code="OK", client="anonymous") == 3
    assert m(requests, model="tiny-dag", code="OK", client="anonymous") == 1
    assert m(requests, model="tiny", code="FAILED_PRECONDITION", client="anonymous") == 1
    # A model id the server does not serve is one label, whatever the client sent.
    assert m(requests, model="unknown", code="NOT_FOUND", client="anonymous") == 1
    assert not any("no-such-model" in str(key) for key in m.samples)

    for stage in STAGES:
        assert m("splitinfer_stage_seconds_count", model="tiny", stage=stage) == 3
        assert m("splitinfer_stage_seconds_bucket", model="tiny", stage=stage, le="+Inf") == 3
    tail_s = m("splitinfer_stage_seconds_sum", model="tiny", stage="tail")
    total_s = m("splitinfer_stage_seconds_sum", model="tiny", stage="total")
    assert 0 < tail_s <= total_s
    # The server's account is the one each reply carried.
    assert total_s == pytest.approx(sum(r.timing.server_ms for r in results) / 1e3, rel=1e-6)

    # Bytes: the messages as serialised, the same count on both sides of the wire.
    ok_request_bytes = sum(r.request_bytes for r in results)
    bad_request_bytes = request_for(tiny, tiny_input()).ByteSize()  # the hash-mismatch request
    assert m("splitinfer_request_bytes_total", model="tiny") == ok_request_bytes + bad_request_bytes
    assert m("splitinfer_response_bytes_total", model="tiny") == sum(r.response_bytes for r in results)
    assert m("splitinfer_request_bytes_total", model="tiny-dag") == dag_result.request_bytes

    assert m("splitinfer_in_flight_requests") == 0
    for bundle in (tiny, dag):
        assert m("splitinfer_bundle_info", model=bundle.manifest.model_id, bundle_hash=bundle.manifest.bundle_hash) == 1


def test_each_server_counts_in_its_own_registry(tiny_bundle: Path, scrape: Callable) -> None:
    config = ServerConfig([tiny_bundle], metrics_port=0)
    with serve(config) as first, serve(config) as second:
        with EdgeClient(tiny_bundle, first.address) as client:
            for _ in range(2):
                client.infer(tiny_input())
        assert scrape(first.metrics_port)("splitinfer_requests_total", model="tiny", code="OK", client="anonymous") == 2
        assert (
            scrape(second.metrics_port)("splitinfer_requests_total", model="tiny", code="OK", client="anonymous") == 0
        )


def test_metrics_are_off_unless_asked_for(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle])) as running:
        assert running.metrics_port is None and running.metrics_endpoint is None
        # Still counted, for a caller that reads the registry itself.
        with EdgeClient(tiny_bundle, running.address) as client:
            client.infer(tiny_input())
        assert running.metrics is not None
        assert (
            running.metrics.registry.get_sample_value(
                "splitinfer_requests_total", {"model": "tiny", "code": "OK", "client": "anonymous"}
            )
            == 1
        )


def test_a_taken_metrics_port_is_a_clear_error_and_leaves_nothing_running(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerUnavailableError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve(ServerConfig([tiny_bundle], port=0, metrics_port=port))
    # The gRPC port the failed start bound is free again: a server starts on it.
    with serve(ServerConfig([tiny_bundle])) as running, EdgeClient(tiny_bundle, running.address) as client:
        np.testing.assert_array_equal(client.infer(tiny_input()).outputs["logits"].shape, (1, 4))


def test_stream_messages_are_counted_one_by_one_with_their_codes(tiny_bundle: Path, scrape: Callable) -> None:
    good = request_for(load_bundle(tiny_bundle), tiny_input())
    bad = pb.InferRequest()
    bad.CopyFrom(good)
    bad.bundle_hash = "f" * 64
    config = ServerConfig([tiny_bundle], metrics_port=0)
    with serve(config) as running, grpc.insecure_channel(running.address) as channel:
        replies = list(pb_grpc.SplitInferenceStub(channel).InferStream(iter([good, bad, good]), timeout=10))
        m = scrape(running.metrics_port)
    assert [r.HasField("error") for r in replies] == [False, True, False]
    assert m("splitinfer_requests_total", model="tiny", code="OK", client="anonymous") == 2
    assert m("splitinfer_requests_total", model="tiny", code="FAILED_PRECONDITION", client="anonymous") == 1


def test_unfinished_scrapes_hold_a_bounded_number_of_threads(tiny_bundle: Path, scrape: Callable) -> None:
    with serve(ServerConfig([tiny_bundle], metrics_port=0)) as running:
        before = threading.active_count()
        silent = [socket.create_connection(("127.0.0.1", running.metrics_port)) for _ in range(48)]
        try:
            # Give the server time to accept them all.
            time.sleep(1)
            assert threading.active_count() - before <= MAX_SCRAPERS
        finally:
            for sock in silent:
                sock.close()
        # Once they are gone, scrapes are answered again.
        assert scrape(running.metrics_port)("splitinfer_in_flight_requests") == 0
