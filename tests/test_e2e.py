"""The whole path on real models: torch model or .onnx file → profile → plan → export → a real
server on a loopback port → EdgeClient, with answers compared with the unsplit model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.client import EdgeClient
from protos.bundle import Bundle
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from splitter.cost.network import PRESETS
from splitter.cost.plan import plan
from splitter.export.bundle import export_bundle
from splitter.graph.cuts import find_cut
from splitter.models import create_model, evaluation_photos
from splitter.pipeline import export_model, model_cuts, profile_model
from splitter.policies import Constraints
from splitter.profile.schema import Profile
from splitter.sources import ModelSource, load_source, torch_to_onnx

MID_CUT = "features.6"  # features.6/Add, one (1, 16, 12, 12) tensor


def _reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.fixture(scope="module")
def mobilenet() -> ModelSource:
    return load_source("mobilenet_v2_035", input_shape=(1, 3, 96, 96))


@pytest.fixture(scope="module")
def samples(mobilenet: ModelSource) -> list[tuple[str, dict[str, np.ndarray]]]:
    return mobilenet.samples(4)


@pytest.fixture(scope="module")
def mobilenet_bundles(tmp_path_factory: pytest.TempPathFactory, mobilenet: ModelSource, samples) -> dict[str, Bundle]:
    """The same cut exported with two codecs: the same halves, so the same bundle hash."""
    root = tmp_path_factory.mktemp("mobilenet")
    cut = find_cut(model_cuts(mobilenet), MID_CUT)
    return {
        codec: export_bundle(mobilenet, cut, root / codec, samples, codec=codec)[0] for codec in ("int8+zstd", "fp32")
    }


MUST_OFFLOAD = Constraints(allow_edge_only=False)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet_tiny exported by torch to an .onnx file: from here on the pipeline sees only the file."""
    path = tmp_path_factory.mktemp("onnx") / "tiny_resnet.onnx"
    onnx.save(torch_to_onnx(create_model("resnet_tiny"), (1, 3, 64, 64)), str(path))
    return path


@pytest.fixture(scope="module")
def onnx_profile(onnx_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The model is so small (~0.2 ms here) that only a device thousands of times slower than this
    # machine makes offloading pay over 4G's 40 ms RTT. Even then it pays by only 20-50 %, and
    # timing noise × 10 000 sometimes makes all on the device the plan, so the export and the plan
    # below say that this deployment must offload (allow_edge_only=False).
    profile = profile_model(str(onnx_file), repeats=2, warmup=1, edge_slowdown=10_000.0, server_threads=1)
    return profile.save(tmp_path_factory.mktemp("profile") / "profile.json")


@pytest.fixture(scope="module")
def onnx_bundle(onnx_file: Path, onnx_profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle, _ = export_model(
        str(onnx_file),
        tmp_path_factory.mktemp("bundle") / "tiny_resnet",
        cut="auto",
        codec="fp32+zstd",
        profile_path=onnx_profile,
        network=PRESETS["4g"],
        constraints=MUST_OFFLOAD,
    )
    return bundle


@pytest.fixture(scope="module")
def server(mobilenet_bundles: dict[str, Bundle], onnx_bundle: Bundle) -> Iterator[RunningServer]:
    """ONE server for both models (the two mobilenet bundles are one tail: it is served once)."""
    with serve(ServerConfig([mobilenet_bundles["int8+zstd"], onnx_bundle], threads=1, max_workers=4)) as running:
        yield running


@pytest.mark.parametrize("codec", ["fp32", "int8+zstd"])
def test_torch_model_split_across_a_real_server(
    codec: str, mobilenet: ModelSource, mobilenet_bundles: dict[str, Bundle], server: RunningServer, samples
) -> None:
    bundle = mobilenet_bundles[codec]
    assert bundle.manifest.bundle_hash == mobilenet_bundles["fp32"].manifest.bundle_hash
    (cut_spec,) = bundle.manifest.cut
    raw_bytes = int(np.prod(cut_spec.shape)) * 4
    with EdgeClient(bundle.path, server.address) as client:
        assert client.codec.name == codec  # the bundle's own codec by default
        for name, feed in samples:
            result = client.infer(feed)
            expected = _reference(mobilenet.model, feed)
            got = result.outputs["output"]
            assert got.shape == expected.shape == (1, 1000), name
            if codec == "fp32":
                assert np.max(np.abs(got - expected)) <= 1e-4, name
                assert result.bytes_sent == raw_bytes
            else:
                # The export checked these photos keep their top-1 class through int8; the logits
                # move by a small fraction of their scale.
                assert got.argmax() == expected.argmax(), name
                assert np.max(np.abs(got - expected)) <= 0.1 * np.max(np.abs(expected)), name
                assert 0 < result.bytes_sent < raw_bytes / 4
            assert result.request_bytes > result.bytes_sent and result.response_bytes > 4000
            t = result.timing
            assert t.head_ms > 0 and t.tail_ms > 0 and t.total_ms >= t.head_ms + t.encode_ms


def test_photos_go_through_the_bundles_preprocessing(
    mobilenet: ModelSource, mobilenet_bundles: dict[str, Bundle], server: RunningServer
) -> None:
    photo = evaluation_photos()[1]
    with EdgeClient(mobilenet_bundles["fp32"].path, server.address) as client:
        got = client.infer_image(photo.image).outputs["output"]
    expected = _reference(mobilenet.model, mobilenet.inputs_from_image(photo.image))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_an_onnx_file_profiled_planned_exported_and_served(
    onnx_file: Path, onnx_profile: Path, onnx_bundle: Bundle, server: RunningServer
) -> None:
    profile = Profile.load(onnx_profile)
    assert profile.model_id == "tiny_resnet" and profile.input_shapes == {"input": (1, 3, 64, 64)}
    assert profile.edge_slowdown == 10_000.0 and profile.repeats == 2 and profile.server.threads == 1
    assert profile.cuts[0].name == "input" and profile.cuts[-1].name == "output"
    chosen = plan(profile, PRESETS["4g"], codec="fp32+zstd", constraints=MUST_OFFLOAD).chosen
    m = onnx_bundle.manifest
    assert m.model_id == "tiny_resnet" and m.cut_name == chosen.name and m.codec == "fp32+zstd"
    assert not chosen.is_edge_only and not chosen.is_cloud_only and m.has_head and m.has_tail
    assert [s.name for s in m.cut] == list(profile.cut(chosen.name).tensors)
    assert m.verification["max_abs_diff_fp32"] <= 1e-4

    source = load_source(str(onnx_file))
    with EdgeClient(onnx_bundle.path, server.address) as client:
        for _, feed in source.samples(3):
            result = client.infer(feed["input"])
            np.testing.assert_allclose(result.outputs["output"], _reference(source.model, feed), rtol=0, atol=1e-5)
            assert result.bytes_sent < profile.cut(chosen.name).raw_nbytes  # zstd on the wire


def test_one_server_serves_both_models_at_once(
    mobilenet: ModelSource,
    mobilenet_bundles: dict[str, Bundle],
    onnx_file: Path,
    onnx_bundle: Bundle,
    server: RunningServer,
    samples,
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        listed = pb_grpc.SplitInferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert sorted((b.model_id, b.bundle_hash) for b in listed.bundles) == sorted(
        [
            ("mobilenet_v2_035", mobilenet_bundles["fp32"].manifest.bundle_hash),
            ("tiny_resnet", onnx_bundle.manifest.bundle_hash),
        ]
    )
    tiny = load_source(str(onnx_file))
    tiny_feed = tiny.samples(1)[0][1]
    name, feed = samples[2]
    with (
        EdgeClient(mobilenet_bundles["fp32"].path, server.address) as a,
        EdgeClient(onnx_bundle.path, server.address) as b,
    ):
        # Interleaved, over one server: each request reaches its own model's tail.
        for _ in range(2):
            got_a = a.infer(feed).outputs["output"]
            got_b = b.infer(tiny_feed).outputs["output"]
            np.testing.assert_allclose(got_a, _reference(mobilenet.model, feed), rtol=0, atol=1e-4)
            np.testing.assert_allclose(got_b, _reference(tiny.model, tiny_feed), rtol=0, atol=1e-5)
        streamed = list(a.infer_stream([s[1] for s in samples]))
    for (_, sample_feed), result in zip(samples, streamed):
        np.testing.assert_allclose(
            result.outputs["output"], _reference(mobilenet.model, sample_feed), rtol=0, atol=1e-4
        )
    assert len(streamed) == len(samples)
