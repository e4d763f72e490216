"""TailService without a network: what it serves, what it refuses at start-up, and its answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from bundles import build_bundle, loosen_cut, reference_output, request_for, tiny_input

from cloud_runtime.tails import TailRunError, TailService, choose_providers
from protos.bundle import load_bundle, write_manifest
from protos.codec import decode, list_codecs
from protos.errors import BundleError, BundleMismatchError, CodecError, TensorSpecError, UnknownModelError
from protos.splitinfer.v1 import inference_pb2 as pb


def _logits(response: pb.InferResponse) -> np.ndarray:
    (tensor,) = response.outputs
    return decode(tensor)


@pytest.mark.parametrize("codec", [str(c) for c in list_codecs()])
@pytest.mark.parametrize("bundle_name", ["tiny_bundle", "dag_bundle"])
def test_infer_matches_the_unsplit_model(bundle_name: str, codec: str, request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(bundle_name))
    tails = TailService([bundle], threads=1)
    x = tiny_input(1)
    response = tails.infer(request_for(bundle, x, codec, request_id="abc"))
    assert response.request_id == "abc"
    tolerance = {"fp32": 1e-5, "fp16": 2e-3, "int8": 2e-2, "int8ch": 2e-2, "int4ch": 0.3}[codec.split("+")[0]]
    np.testing.assert_allclose(_logits(response), reference_output(x), atol=tolerance, rtol=0)
    timing = response.timing
    parts = (timing.decode_ms, timing.tail_ms, timing.encode_ms)
    assert min(parts) >= 0 and timing.total_ms >= sum(parts) - 1e-6


def test_one_model_several_exports_side_by_side(tmp_path: Path) -> None:
    old = build_bundle(tmp_path / "old", seed=0)
    new = build_bundle(tmp_path / "new", seed=1)
    assert old.manifest.bundle_hash != new.manifest.bundle_hash
    tails = TailService([old, new])
    x = tiny_input()
    for bundle, seed in ((old, 0), (new, 1)):
        np.testing.assert_allclose(_logits(tails.infer(request_for(bundle, x))), reference_output(x, seed), atol=1e-5)
    listed = {(b.model_id, b.bundle_hash) for b in tails.list_models().bundles}
    assert listed == {("tiny", old.manifest.bundle_hash), ("tiny", new.manifest.bundle_hash)}


def test_refusals_name_what_is_served(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    tails = TailService([bundle])
    request = request_for(bundle, tiny_input())
    request.model_id = "resnet"
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet'; this server serves \['tiny'\]"):
        tails.infer(request)
    request.model_id, request.bundle_hash = "tiny", "f00"
    with pytest.raises(BundleMismatchError, match=f"bundle_hash 'f00'.*\\['{bundle.manifest.bundle_hash}'\\]"):
        tails.infer(request)
    request.bundle_hash = bundle.manifest.bundle_hash
    request.tensors[0].name = "c1"
    with pytest.raises(TensorSpecError, match=r"missing \['act'\]; unexpected \['c1'\]"):
        tails.infer(request)


def test_shape_is_checked_before_the_payload(tiny_bundle: Path) -> None:
    """A declared shape outside the manifest is refused before its bytes are looked at."""
    bundle = load_bundle(tiny_bundle)
    request = request_for(bundle, tiny_input())
    del request.tensors[0].shape[:]
    request.tensors[0].shape.extend([1 << 30, 1 << 30])
    with pytest.raises(TensorSpecError, match="the cut needs"):
        TailService([bundle]).infer(request)


def test_flexible_dims_still_bound_the_payload_and_tail_failures_are_internal(tmp_path: Path) -> None:
    loose = loosen_cut(build_bundle(tmp_path))
    tails = TailService([loose])
    request = request_for(loose, tiny_input())
    tensor = request.tensors[0]
    del tensor.shape[:]
    tensor.shape.extend([1, 4, 1 << 20, 1 << 20])
    with pytest.raises(CodecError, match="limit"):
        tails.infer(request)
    del tensor.shape[:]
    tensor.shape.extend([1, 4, 2, 2])
    tensor.data = np.zeros((1, 4, 2, 2), np.float32).tobytes()
    with pytest.raises(TailRunError, match="model 'tiny': the tail failed") as caught:
        tails.infer(request)
    assert caught.value.status_code.name == "INTERNAL"


def test_bundles_that_cannot_be_served_are_refused_at_start_up(tmp_path: Path, tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="has no tail"):
        TailService([build_bundle(tmp_path / "edge", placement="edge")])
    with pytest.raises(BundleError, match="duplicates"):
        TailService([load_bundle(tiny_bundle), load_bundle(tiny_bundle)])
    with pytest.raises(BundleError, match="no bundles"):
        TailService([])
    wrong = build_bundle(tmp_path / "wrong")
    spec = dataclasses.replace(wrong.manifest.cut[0], name="c1")
    write_manifest(wrong.path, dataclasses.replace(wrong.manifest, cut=(spec,)))
    with pytest.raises(BundleError, match=r"inputs \['act'\] are not the manifest's cut \['c1'\]"):
        TailService([load_bundle(wrong.path)])


def test_a_cloud_only_bundle_takes_the_raw_input(tmp_path: Path) -> None:
    cloud = build_bundle(tmp_path, placement="cloud")
    x = tiny_input(2)
    np.testing.assert_allclose(
        _logits(TailService([cloud]).infer(request_for(cloud, x))), reference_output(x), atol=1e-5
    )


def test_providers_prefer_cuda_and_keep_cpu() -> None:
    providers = choose_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers[0] in ("CUDAExecutionProvider", "CPUExecutionProvider")
