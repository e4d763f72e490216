"""Bad input never crashes or hangs the server: every bad request gets a non-OK status whose
message names the problem, and the same server answers the next good request."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import build_bundle, loosen_cut, reference_output, request_for, tiny_input, zstd_bomb

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from protos.bundle import load_bundle
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

Mutation = Callable[[pb.InferRequest], None]
BOMB = zstd_bomb(100 << 20)


@pytest.fixture(scope="module")
def stub(tiny_server: str) -> Iterator[pb_grpc.SplitInferenceStub]:
    with grpc.insecure_channel(tiny_server) as channel:
        yield pb_grpc.SplitInferenceStub(channel)


@pytest.fixture(scope="module")
def good(tiny_bundle: Path) -> pb.InferRequest:
    return request_for(load_bundle(tiny_bundle), tiny_input())


def assert_serves(stub: pb_grpc.SplitInferenceStub, good: pb.InferRequest) -> None:
    reply = stub.Infer(good, timeout=10)
    out = np.frombuffer(reply.outputs[0].data, "<f4").reshape(1, 4)
    np.testing.assert_allclose(out, reference_output(tiny_input()), atol=1e-5, rtol=0)


def _set(**fields: object) -> Mutation:
    def mutate(request: pb.InferRequest) -> None:
        for name, value in fields.items():
            setattr(request, name, value)

    return mutate


def _tensor(**fields: object) -> Mutation:
    def mutate(request: pb.InferRequest) -> None:
        tensor = request.tensors[0]
        for name, value in fields.items():
            if name == "shape":
                del tensor.shape[:]
                tensor.shape.extend(value)  # type: ignore[arg-type]
            else:
                setattr(tensor, name, value)

    return mutate


def _drop_tensors(request: pb.InferRequest) -> None:
    del request.tensors[:]


def _add_tensor(name: str) -> Mutation:
    def mutate(request: pb.InferRequest) -> None:
        extra = request.tensors.add()
        extra.CopyFrom(request.tensors[0])
        extra.name = name

    return mutate


def _truncate(request: pb.InferRequest) -> None:
    request.tensors[0].data = request.tensors[0].data[:-4]


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD = {
    "unknown-model": (
        _set(model_id="nope"),
        grpc.StatusCode.NOT_FOUND,
        r"unknown model 'nope'.*\['tiny', 'tiny-dag'\]",
    ),
    "hash-mismatch": (
        _set(bundle_hash="0" * 64),
        grpc.StatusCode.FAILED_PRECONDITION,
        r"bundle_hash '0{64}'.*holds tails for \['[0-9a-f]{64}'\]",
    ),
    "empty-hash": (
        _set(bundle_hash=""),
        grpc.StatusCode.FAILED_PRECONDITION,
        r"bundle_hash ''",
    ),
    "wrong-dtype": (
        _tensor(dtype=pb.DTYPE_FLOAT16),
        INVALID,
        r"'act' has dtype DTYPE_FLOAT16, the cut needs DTYPE_FLOAT32",
    ),
    "unknown-dtype": (
        _tensor(dtype=99),
        INVALID,
        r"'act' has dtype <unknown enum value 99>",
    ),
    "wrong-shape": (
        _tensor(shape=[1, 4, 8, 9]),
        INVALID,
        r"'act' has shape \[1, 4, 8, 9\], the cut needs \[1, 4, 8, 8\]",
    ),
    "wrong-rank": (
        _tensor(shape=[4, 8, 8]),
        INVALID,
        r"'act' has shape \[4, 8, 8\]",
    ),
    "missing-tensor": (
        _drop_tensors,
        INVALID,
        r"missing \['act'\]",
    ),
    "extra-tensor": (
        _add_tensor("bogus"),
        INVALID,
        r"unexpected \['bogus'\]",
    ),
    "duplicate-tensor": (
        _add_tensor("act"),
        INVALID,
        r"duplicated \['act'\]",
    ),
    "corrupt-zstd": (
        _tensor(compression=pb.COMPRESSION_ZSTD, data=b"\x28\xb5\x2f\xfd" + b"junk" * 20),
        INVALID,
        r"corrupt zstd data",
    ),
    "bomb": (
        _tensor(compression=pb.COMPRESSION_ZSTD, data=BOMB),
        INVALID,
        r"inflates beyond the 1024 bytes.*decompression bomb",
    ),
    "payload-length": (
        _truncate,
        INVALID,
        r"'act': payload is 1020 bytes, shape \[1, 4, 8, 8\] with encoding fp32 needs 1024",
    ),
    "unknown-encoding": (
        _tensor(encoding=99),
        INVALID,
        r"'act': unknown encoding enum value 99",
    ),
    "unknown-compression": (
        _tensor(compression=7),
        INVALID,
        r"'act': unknown compression enum value 7",
    ),
    "bad-int8-scale": (
        _tensor(encoding=pb.ENCODING_INT8_AFFINE, data=bytes(256), scale=float("inf")),
        INVALID,
        r"scale must be a finite positive number, got inf",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_clear_status_and_the_server_keeps_serving(
    case: str, stub: pb_grpc.SplitInferenceStub, good: pb.InferRequest
) -> None:
    mutate, code, message = BAD[case]
    request = pb.InferRequest()
    request.CopyFrom(good)
    mutate(request)
    start = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Infer(request, timeout=10)
    assert time.perf_counter() - start < 2.0
    assert caught.value.code() == code
    assert re.search(message, caught.value.details()), caught.value.details()
    assert_serves(stub, good)


def test_oversize_message_is_refused_resource_exhausted(tiny_bundle: Path, good: pb.InferRequest) -> None:
    config = ServerConfig([tiny_bundle], max_message_bytes=2048)
    with serve(config) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        big = pb.InferRequest()
        big.CopyFrom(good)
        big.tensors[0].data = bytes(4096)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Infer(big, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in caught.value.details()
        assert_serves(stub, good)


def test_a_failing_tail_is_internal_and_the_server_keeps_serving(
    tmp_path: Path, good: pb.InferRequest, caplog: pytest.LogCaptureFixture
) -> None:
    # The manifest accepts any spatial size, the tail.onnx does not: the request passes every
    # check, then onnxruntime refuses it.
    loose = loosen_cut(build_bundle(tmp_path))
    with serve(ServerConfig([loose])) as running, grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        request = request_for(loose, tiny_input())
        small = np.ones((1, 4, 2, 2), np.float32)
        request.tensors[0].data = small.tobytes()
        del request.tensors[0].shape[:]
        request.tensors[0].shape.extend(small.shape)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Infer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "the tail failed" in caught.value.details()
        assert stub.Infer(request_for(loose, tiny_input()), timeout=10).outputs

        def boom(request: pb.InferRequest, **options: object) -> pb.InferResponse:
            raise RuntimeError("boom")

        running.tails.infer = boom  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="cloud_runtime.servicer"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Infer(good, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error: RuntimeError: boom"
        assert any(record.exc_info for record in caplog.records)
        assert len(stub.ListModels(pb.ListModelsRequest(), timeout=10).bundles) == 1


def test_stream_answers_a_bad_message_in_band_and_goes_on(
    stub: pb_grpc.SplitInferenceStub, good: pb.InferRequest
) -> None:
    requests = []
    for i, case in enumerate([None, "hash-mismatch", None, "bomb", "wrong-shape", None]):
        request = pb.InferRequest()
        request.CopyFrom(good)
        request.request_id = f"m{i}"
        if case:
            BAD[case][0](request)
        requests.append(request)
    replies = list(stub.InferStream(iter(requests), timeout=10))
    assert [r.request_id for r in replies] == [f"m{i}" for i in range(6)]
    codes = [r.error.code if r.HasField("error") else 0 for r in replies]
    assert codes == [0, grpc.StatusCode.FAILED_PRECONDITION.value[0], 0, 3, 3, 0]
    assert "decompression bomb" in replies[3].error.message
    expected = reference_output(tiny_input())
    for reply in (replies[0], replies[2], replies[5]):
        np.testing.assert_allclose(np.frombuffer(reply.outputs[0].data, "<f4").reshape(1, 4), expected, atol=1e-5)


def test_list_models_names_every_served_bundle(
    stub: pb_grpc.SplitInferenceStub, tiny_bundle: Path, dag_bundle: Path
) -> None:
    served = {(b.model_id, b.bundle_hash): b for b in stub.ListModels(pb.ListModelsRequest(), timeout=10).bundles}
    for path in (tiny_bundle, dag_bundle):
        manifest = load_bundle(path).manifest
        cut = served[manifest.model_id, manifest.bundle_hash].cut
        assert [(t.name, t.dtype, list(t.shape)) for t in cut] == [
            (s.name, pb.DTYPE_FLOAT32, list(s.shape)) for s in manifest.cut
        ]
        assert all(not t.data for t in cut)


def test_non_finite_inputs_are_refused_only_when_the_server_says_so(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    x = tiny_input()
    x[0, 0, 0, 0] = np.nan
    with serve(ServerConfig([tiny_bundle])) as lenient, grpc.insecure_channel(lenient.address) as channel:
        # NaN is a float like any other on the wire: answered, as the model computes it.
        pb_grpc.SplitInferenceStub(channel).Infer(request_for(bundle, x), timeout=10)
    with (
        serve(ServerConfig([tiny_bundle], reject_non_finite=True)) as strict,
        grpc.insecure_channel(strict.address) as channel,
    ):
        stub = pb_grpc.SplitInferenceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Infer(request_for(bundle, x), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "holds NaN or infinite values" in caught.value.details()
        assert stub.Infer(request_for(bundle, tiny_input()), timeout=10).outputs  # and it goes on serving
