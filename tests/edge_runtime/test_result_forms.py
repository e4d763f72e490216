"""Results sized for the downlink, end to end against a real server: the edge asks for a codec or a
server-side top-k (or the bundle names a default), the server answers in that form, and a result
the device answered itself has the same form."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import build_bundle, reference_output, request_for, tiny_input
from ports import free_port

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY
from protos.bundle import load_bundle
from protos.errors import CodecError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

TOP2 = ["logits:topk_values", "logits:topk_indices"]


def _expected_top2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = reference_output(x)
    order = np.argsort(-logits, axis=-1, kind="stable")[..., :2]
    return np.take_along_axis(logits, order, axis=-1), order


def test_the_server_answers_the_form_the_edge_asks_for(tiny_bundle: Path, tiny_server: str) -> None:
    x = tiny_input(3)
    with EdgeClient(tiny_bundle, tiny_server) as client:
        raw = client.infer(x)
    with EdgeClient(tiny_bundle, tiny_server, EdgeConfig(result="top2:fp16")) as client:
        top = client.infer(x)
    assert list(raw.outputs) == ["logits"] and list(top.outputs) == TOP2
    values, indices = _expected_top2(x)
    np.testing.assert_array_equal(top.outputs["logits:topk_indices"], indices)
    np.testing.assert_allclose(top.outputs["logits:topk_values"], values, rtol=2e-3)


def test_a_bundle_default_applies_unless_the_request_asks_otherwise(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b", result="top2")
    x = tiny_input(5)
    with serve(ServerConfig([bundle.path])) as server:
        with EdgeClient(bundle, server.address) as client:
            assert list(client.infer(x).outputs) == TOP2
        with EdgeClient(bundle, server.address, EdgeConfig(result="fp32")) as client:
            np.testing.assert_allclose(client.infer(x).outputs["logits"], reference_output(x), atol=1e-5)
    # The default is part of what the bundle hash covers: a server whose bundle differs only in it
    # holds another bundle.
    assert bundle.manifest.bundle_hash != build_bundle(tmp_path / "raw").manifest.bundle_hash


def test_a_result_answered_here_has_the_same_form(tiny_bundle: Path) -> None:
    x = tiny_input(6)
    config = EdgeConfig(result="top2", fallback=True, retry=NO_RETRY)
    with EdgeClient(tiny_bundle, f"127.0.0.1:{free_port()}", config) as client:
        result = client.infer(x)
    assert result.fallback and list(result.outputs) == TOP2
    values, indices = _expected_top2(x)
    np.testing.assert_array_equal(result.outputs["logits:topk_indices"], indices)
    np.testing.assert_allclose(result.outputs["logits:topk_values"], values, atol=1e-5)


@pytest.mark.parametrize(
    "spec, message",
    [
        (pb.ResultSpec(encoding=77), "result encoding: unknown enum value 77"),
        (pb.ResultSpec(compression=5), "result compression: unknown enum value 5"),
        (pb.ResultSpec(top_k=5), "result top_k 5 exceeds the 4 scores of output 'logits'"),
        (pb.ResultSpec(top_k=-1), "top_k must be 0"),
    ],
)
def test_a_form_the_server_cannot_honour_is_invalid_argument(
    spec: pb.ResultSpec, message: str, tiny_bundle: Path, tiny_server: str
) -> None:
    request = request_for(load_bundle(tiny_bundle), tiny_input())
    request.result.CopyFrom(spec)
    with grpc.insecure_channel(tiny_server) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.SplitInferenceStub(channel).Infer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_the_edge_refuses_a_top_k_its_model_cannot_give_before_any_call(tiny_bundle: Path) -> None:
    with pytest.raises(CodecError, match="top_k 9 exceeds the 4 scores"):
        EdgeClient(tiny_bundle, "127.0.0.1:1", EdgeConfig(result="top9"))
