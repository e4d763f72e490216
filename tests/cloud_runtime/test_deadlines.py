"""Client deadlines: a request whose deadline has passed is dropped before its tail runs, answered
DEADLINE_EXCEEDED and counted; one without a deadline is never dropped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import build_bundle, loosen_cut, reference_output, request_for, tiny_input, zstd_bomb

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from cloud_runtime.tails import DeadlineExceededError, TailService
from protos.bundle import load_bundle
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

# 128 MiB of zeros in a 4 KB zstd frame: quick to send, ~0.1 s for the server to decode, so a
# short deadline passes after the server has started on the request and before its tail runs.
SLOW_ELEMENTS = 32 << 20
SLOW_TIMEOUT_S = 0.03


def test_the_core_drops_a_request_whose_deadline_has_passed(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    tails = TailService([bundle], threads=1)
    request = request_for(bundle, tiny_input())
    with pytest.raises(
        DeadlineExceededError, match=r"model 'tiny': the client's deadline passed [0-9.]+ ms before decoding"
    ):
        tails.infer(request, deadline=time.monotonic() - 0.001)
    assert DeadlineExceededError.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
    # A deadline still ahead changes nothing.
    response = tails.infer(request, deadline=time.monotonic() + 10)
    out = np.frombuffer(response.outputs[0].data, "<f4").reshape(1, 4)
    np.testing.assert_allclose(out, reference_output(tiny_input()), atol=1e-5, rtol=0)


def _slow_request(bundle_path: Path) -> pb.InferRequest:
    """Passes every check of a loosened cut; its tail would fail (tail.onnx wants 8x8), so a tail
    that ran shows as INTERNAL, a request dropped before it as DEADLINE_EXCEEDED."""
    bundle = load_bundle(bundle_path)
    width = 1024
    shape = (1, 4, SLOW_ELEMENTS // (4 * width), width)
    tensor = pb.Tensor(
        name="act",
        dtype=pb.DTYPE_FLOAT32,
        shape=shape,
        encoding=pb.ENCODING_RAW,
        compression=pb.COMPRESSION_ZSTD,
        data=zstd_bomb(SLOW_ELEMENTS * 4),
    )
    return pb.InferRequest(
        request_id="slow", model_id=bundle.manifest.model_id, bundle_hash=bundle.manifest.bundle_hash, tensors=[tensor]
    )


@pytest.mark.timeout(60)
def test_the_server_drops_work_whose_deadline_passed_before_the_tail(tmp_path: Path, scrape: Callable) -> None:
    loose = loosen_cut(build_bundle(tmp_path / "loose")).path
    slow = _slow_request(loose)
    with serve(ServerConfig([loose], metrics_port=0)) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        assert stub.ListModels(pb.ListModelsRequest(), timeout=10).bundles  # connected and warm

        def count(code: str) -> float:
            return scrape(running.metrics_port)(
                "splitinfer_requests_total", model="tiny", code=code, client="anonymous"
            )

        # gRPC itself refuses a call whose deadline passed before the server began on it; on a
        # busy machine that can happen to an attempt, so try a few times.
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Infer(slow, timeout=SLOW_TIMEOUT_S)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            deadline = time.monotonic() + 10
            while count("DEADLINE_EXCEEDED") + count("INTERNAL") == 0 and time.monotonic() < deadline:
                time.sleep(0.02)  # the server is still decoding what the client gave up on
            if count("DEADLINE_EXCEEDED"):
                break
        assert count("DEADLINE_EXCEEDED") == 1
        assert count("INTERNAL") == 0, "the tail ran for a request nobody was waiting for"
        assert scrape(running.metrics_port)("splitinfer_stage_seconds_count", model="tiny", stage="tail") == 0

        # Without a deadline the same request is worked on to the end: its tail runs, and fails.
        with pytest.raises(grpc.RpcError) as caught:
            stub.Infer(slow)
        assert caught.value.code() == grpc.StatusCode.INTERNAL and "the tail failed" in caught.value.details()
        # And the server answers a good request.
        good = request_for(load_bundle(loose), tiny_input())
        assert stub.Infer(good, timeout=10).outputs
