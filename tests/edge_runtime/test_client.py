"""EdgeClient end to end against a real server: answers, timings, byte counts, streams, and errors."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import PREPROCESS, build_bundle, reference_output, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.results import EdgeResult
from protos.codec import Codec, list_codecs
from protos.errors import (
    BundleMismatchError,
    ServerUnavailableError,
    SplitInferError,
    TensorSpecError,
    UnknownModelError,
)

TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "int8": 2e-2, "int8ch": 2e-2, "int4ch": 0.3}


def assert_consistent(result: EdgeResult) -> None:
    t = result.timing
    fields = (t.head_ms, t.encode_ms, t.network_ms, t.decode_ms, t.tail_ms, t.server_ms, t.output_decode_ms)
    assert min(fields) >= 0
    assert t.server_ms >= t.decode_ms + t.tail_ms - 1e-6
    assert t.total_ms >= t.head_ms + t.encode_ms + t.output_decode_ms
    assert t.total_ms >= t.head_ms + t.encode_ms + t.network_ms + t.server_ms + t.output_decode_ms - 0.05
    assert re.fullmatch(r"[0-9a-f]{32}", result.request_id)


@pytest.mark.parametrize("codec", list_codecs(), ids=str)
@pytest.mark.parametrize("bundle_name", ["tiny_bundle", "dag_bundle"])
def test_split_inference_matches_the_unsplit_model(
    bundle_name: str, codec: Codec, tiny_server: str, request: pytest.FixtureRequest
) -> None:
    x = tiny_input(4)
    with EdgeClient(request.getfixturevalue(bundle_name), tiny_server, EdgeConfig(codec=codec)) as client:
        result = client.infer(x)
    assert list(result.outputs) == ["logits"]
    np.testing.assert_allclose(result.outputs["logits"], reference_output(x), atol=TOLERANCE[codec.encoding], rtol=0)
    assert_consistent(result)
    assert 0 < result.bytes_sent < result.request_bytes and result.response_bytes > 16
    if codec.compression == "none":
        n_cut = 2 if bundle_name == "dag_bundle" else 1
        assert (
            result.bytes_sent
            == n_cut * 4 * 8 * 8 * {"fp32": 4, "fp16": 2, "int8": 1, "int8ch": 1, "int4ch": 0.5}[codec.encoding]
        )


def test_the_codec_defaults_to_the_bundles(tmp_path: Path, tiny_server: str) -> None:
    # Same model files, so the same bundle_hash: the codec is the device's choice, not the tail's.
    bundle = build_bundle(tmp_path, codec="int8+zstd")
    x = tiny_input()
    with EdgeClient(bundle.path, tiny_server) as client:
        assert client.codec == Codec("int8", "zstd")
        result = client.infer({"x": x})
    assert result.bytes_sent < 4 * 8 * 8
    np.testing.assert_allclose(result.outputs["logits"], reference_output(x), atol=TOLERANCE["int8"])


def test_infer_image_uses_the_bundles_preprocessing(tiny_bundle: Path, tiny_server: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    with EdgeClient(tiny_bundle, tiny_server) as client:
        result = client.infer_image(image)
    np.testing.assert_allclose(result.outputs["logits"], reference_output(PREPROCESS(image)), atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"y": tiny_input()}, r"missing \['x'\], unexpected \['y'\]"),
        (tiny_input().astype(np.float64), "dtype float64, the model needs float32"),
        (tiny_input()[:, :2], r"shape \[1, 2, 8, 8\], the model needs \[1, 3, 8, 8\]"),
    ],
    ids=["name", "dtype", "shape"],
)
def test_bad_inputs_are_refused_on_the_device(
    inputs: object, message: str, tiny_bundle: Path, tiny_server: str
) -> None:
    with EdgeClient(tiny_bundle, tiny_server) as client, pytest.raises(TensorSpecError, match=message):
        client.infer(inputs)  # type: ignore[arg-type]


def test_stream_yields_every_result_in_order(dag_bundle: Path, tiny_server: str) -> None:
    xs = [tiny_input(i) for i in range(5)]
    with EdgeClient(dag_bundle, tiny_server, EdgeConfig(codec="fp16+zstd")) as client:
        results = list(client.infer_stream(iter(xs)))
    assert len({r.request_id for r in results}) == 5
    for x, result in zip(xs, results):
        np.testing.assert_allclose(result.outputs["logits"], reference_output(x), atol=TOLERANCE["fp16"])
        assert_consistent(result)


def test_stream_raises_a_bad_input_after_the_results_before_it(tiny_bundle: Path, tiny_server: str) -> None:
    xs = [tiny_input(0), tiny_input(1), tiny_input(2)[:, :1], tiny_input(3)]
    with EdgeClient(tiny_bundle, tiny_server) as client:
        stream = client.infer_stream(xs)
        for x in xs[:2]:
            np.testing.assert_allclose(next(stream).outputs["logits"], reference_output(x), atol=1e-5)
        with pytest.raises(TensorSpecError, match="shape"):
            next(stream)
        # The client is still usable afterwards.
        np.testing.assert_allclose(client.infer(xs[3]).outputs["logits"], reference_output(xs[3]), atol=1e-5)


def test_stream_raises_a_refused_message(tmp_path: Path, tiny_server: str) -> None:
    other = build_bundle(tmp_path, seed=7)
    with EdgeClient(other, tiny_server) as client, pytest.raises(BundleMismatchError, match="FAILED_PRECONDITION"):
        list(client.infer_stream([tiny_input()]))


@pytest.mark.parametrize("codec", ["fp32", "int8+zstd"])
def test_an_edge_only_bundle_needs_no_server(tmp_path: Path, codec: str) -> None:
    bundle = build_bundle(tmp_path, placement="edge")
    x = tiny_input()
    with EdgeClient(bundle.path, None, EdgeConfig(codec=codec)) as client:
        result = client.infer(x)
        streamed = list(client.infer_stream([x, x]))
    np.testing.assert_array_equal(result.outputs["logits"], reference_output(x))
    assert (result.bytes_sent, result.request_bytes, result.response_bytes) == (0, 0, 0)
    t = result.timing
    assert t.network_ms == t.server_ms == t.encode_ms == 0.0 and t.total_ms >= t.head_ms > 0
    assert [r.outputs["logits"].tolist() for r in streamed] == [result.outputs["logits"].tolist()] * 2


def test_a_cloud_only_bundle_sends_the_raw_input(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path, placement="cloud")
    x = tiny_input()
    with serve(ServerConfig([bundle])) as running, EdgeClient(bundle, running.address) as client:
        result = client.infer(x)
    np.testing.assert_allclose(result.outputs["logits"], reference_output(x), atol=1e-5)
    assert result.bytes_sent == x.nbytes and result.timing.head_ms >= 0


def test_server_refusals_become_matching_errors(tmp_path: Path, tiny_server: str) -> None:
    unknown = build_bundle(tmp_path / "ghost", model_id="ghost")
    with EdgeClient(unknown, tiny_server) as client, pytest.raises(UnknownModelError) as caught:
        client.infer(tiny_input())
    assert "unknown model 'ghost'; this server serves ['tiny', 'tiny-dag']" in str(caught.value)
    assert caught.value.status_code == grpc.StatusCode.NOT_FOUND
    assert isinstance(caught.value.__cause__, grpc.RpcError)

    mismatched = build_bundle(tmp_path / "retrained", seed=3)
    with EdgeClient(mismatched, tiny_server) as client, pytest.raises(BundleMismatchError, match="holds tails for"):
        client.infer(tiny_input())


def test_transport_failures_become_errors(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle], max_message_bytes=512)) as running:
        address = running.address
        with EdgeClient(tiny_bundle, address) as client, pytest.raises(SplitInferError) as caught:
            client.infer(tiny_input())
        assert caught.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    edge_config = EdgeConfig(timeout_s=5)
    with EdgeClient(tiny_bundle, address, edge_config) as client, pytest.raises(ServerUnavailableError) as down:
        client.infer(tiny_input())
    assert f"server {address}: UNAVAILABLE" in str(down.value)


def test_a_bundle_with_a_tail_needs_a_server(tiny_bundle: Path) -> None:
    with pytest.raises(SplitInferError, match="a server address is needed"):
        EdgeClient(tiny_bundle, None)


def test_a_results_stages_add_up_to_its_total(tiny_bundle: Path, tiny_server: str) -> None:
    with EdgeClient(tiny_bundle, tiny_server) as client:
        results = [client.infer(tiny_input(i)) for i in range(5)]
        results += list(client.infer_stream([tiny_input(i) for i in range(3)]))
    for result in results:
        timing = result.timing
        assert all(ms >= 0 for ms in timing.stages.values()), timing
        assert sum(timing.stages.values()) == pytest.approx(timing.total_ms, abs=0.1)
        # The server's part is its own account, queue wait included.
        server = timing.decode_ms + timing.queue_ms + timing.tail_ms + timing.output_encode_ms
        assert server == pytest.approx(timing.server_ms, abs=0.01)
