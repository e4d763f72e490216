"""The server's side of over-the-air updates, on a real server on loopback: several versions of a
model served side by side with the highest advertised as the newest (ListModels), a version
published to a running server, and FetchBundleFile: a file in bounded chunks (resumable from an
offset), each refusal its own status, and the same tokens as every other call."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import onnx
import pytest
from bundles import build_bundle, request_for, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from cloud_runtime.tails import TailService
from protos.bundle import MANIFEST, Bundle, load_bundle, sha256_file, write_manifest
from protos.errors import BundleError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.transport import FILE_CHUNK_BYTES

HEAD_BYTES = 3 * FILE_CHUNK_BYTES + 1000


def _large_head(bundle: Bundle) -> Bundle:
    """The bundle with a head of HEAD_BYTES or more (a long doc string: the same graph), re-hashed."""
    model = onnx.load(bundle.head_path)
    model.doc_string = "x" * HEAD_BYTES
    onnx.save(model, bundle.head_path)
    write_manifest(bundle.path, dataclasses.replace(bundle.manifest, head_sha256=sha256_file(bundle.head_path)))
    return load_bundle(bundle.path)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle, Bundle]:
    root = tmp_path_factory.mktemp("versions")
    return (
        build_bundle(root / "unversioned", seed=2),
        build_bundle(root / "v1", version=1),
        _large_head(build_bundle(root / "v2", version=2, seed=1)),
    )


@pytest.fixture(scope="module")
def stub(versions) -> pb_grpc.SplitInferenceStub:
    with serve(ServerConfig([b.path for b in versions], threads=1)) as running:
        with grpc.insecure_channel(running.address) as channel:
            yield pb_grpc.SplitInferenceStub(channel)


def _fetch(stub, bundle: Bundle, name: str, offset: int = 0) -> list[pb.FileChunk]:
    request = pb.FetchBundleFileRequest(
        model_id=bundle.manifest.model_id, bundle_hash=bundle.manifest.bundle_hash, file=name, offset=offset
    )
    return list(stub.FetchBundleFile(request, timeout=10))


def test_list_models_advertises_the_highest_version_as_the_newest(stub, versions) -> None:
    unversioned, v1, v2 = versions
    listed = {b.bundle_hash: b for b in stub.ListModels(pb.ListModelsRequest(), timeout=10).bundles}
    assert {h: (b.version, b.newest) for h, b in listed.items()} == {
        unversioned.manifest.bundle_hash: (0, False),
        v1.manifest.bundle_hash: (1, False),
        v2.manifest.bundle_hash: (2, True),
    }


def test_a_head_comes_in_bounded_chunks_that_make_the_file(stub, versions) -> None:
    v2 = versions[2]
    chunks = _fetch(stub, v2, "head.onnx")
    data = v2.head_path.read_bytes()
    assert len(chunks) == -(-len(data) // FILE_CHUNK_BYTES) >= 4
    assert all(len(c.data) <= FILE_CHUNK_BYTES and c.size == len(data) for c in chunks)
    assert [c.offset for c in chunks] == list(range(0, len(data), FILE_CHUNK_BYTES))
    assert b"".join(c.data for c in chunks) == data
    resumed = _fetch(stub, v2, "head.onnx", offset=len(data) - 10)
    assert [(c.offset, c.data) for c in resumed] == [(len(data) - 10, data[-10:])]
    manifest = _fetch(stub, v2, MANIFEST)
    assert b"".join(c.data for c in manifest) == (v2.path / MANIFEST).read_bytes()


@pytest.mark.parametrize(
    ("edit", "code", "message"),
    [
        (dict(model_id="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (dict(bundle_hash="0" * 64), grpc.StatusCode.NOT_FOUND, "has no served bundle with bundle_hash '0000"),
        (dict(file="manifest.sig"), grpc.StatusCode.NOT_FOUND, "this server holds no manifest.sig"),
        (dict(file="../v1/head.onnx"), grpc.StatusCode.INVALID_ARGUMENT, "is not one a device may fetch"),
        (dict(file="full.onnx"), grpc.StatusCode.INVALID_ARGUMENT, "is not one a device may fetch"),
        (dict(offset=10**9), grpc.StatusCode.OUT_OF_RANGE, "offset 1000000000 is outside head.onnx"),
        (dict(offset=-1), grpc.StatusCode.OUT_OF_RANGE, "offset -1 is outside head.onnx"),
    ],
)
def test_a_fetch_is_refused_with_a_status_that_says_why(stub, versions, edit: dict, code, message: str) -> None:
    v1 = versions[1]
    fields = dict(model_id="tiny", bundle_hash=v1.manifest.bundle_hash, file="head.onnx") | edit
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.FetchBundleFile(pb.FetchBundleFileRequest(**fields), timeout=10))
    assert refused.value.code() == code
    assert message in refused.value.details()


def test_a_fetch_needs_a_token_where_requests_do(tokens_file: Path, tokens: dict[str, str], versions) -> None:
    v1 = versions[1]
    request = pb.FetchBundleFileRequest(model_id="tiny", bundle_hash=v1.manifest.bundle_hash, file="head.onnx")
    with serve(ServerConfig([v1.path], threads=1, tokens=tokens_file)) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.SplitInferenceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.FetchBundleFile(request, timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = (("authorization", f"Bearer {tokens['alice']}"),)
            chunks = list(stub.FetchBundleFile(request, timeout=10, metadata=metadata))
            assert b"".join(c.data for c in chunks) == v1.head_path.read_bytes()


def test_a_version_published_to_a_running_server_is_served_beside_the_old(tmp_path: Path) -> None:
    v1 = build_bundle(tmp_path / "v1", version=1)
    v2 = build_bundle(tmp_path / "v2", version=2, seed=1)
    x = tiny_input()
    with serve(ServerConfig([v1.path], threads=1)) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.SplitInferenceStub(channel)
            running.tails.publish(v2)
            newest = [b.bundle_hash for b in stub.ListModels(pb.ListModelsRequest(), timeout=10).bundles if b.newest]
            assert newest == [v2.manifest.bundle_hash]
            for bundle in (v1, v2):
                assert stub.Infer(request_for(bundle, x), timeout=10).outputs[0].name == "logits"
        with pytest.raises(BundleError, match="duplicates"):
            running.tails.publish(v2)
        with pytest.raises(BundleError, match="which this server does not serve"):
            running.tails.publish(build_bundle(tmp_path / "other", model_id="other", version=3))


def test_two_bundles_of_one_model_may_not_share_a_version(tmp_path: Path) -> None:
    a = build_bundle(tmp_path / "a", version=3)
    b = build_bundle(tmp_path / "b", version=3, seed=1)
    with pytest.raises(BundleError, match="are both version 3 of model 'tiny'"):
        TailService([a, b], threads=1)


def test_bytes_that_are_not_a_fetch_request_are_invalid_argument(versions) -> None:
    with serve(ServerConfig([versions[1].path], threads=1)) as running:
        with grpc.insecure_channel(running.address) as channel:
            call = channel.unary_stream("/splitinfer.v1.SplitInference/FetchBundleFile")
            with pytest.raises(grpc.RpcError) as refused:
                list(call(b"\xff\xff\xff", timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid splitinfer.v1.FetchBundleFileRequest" in refused.value.details()
