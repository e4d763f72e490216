"""The committed conformance vectors (conformance/vectors) are what conformance/generate.py writes,
and the Python implementation meets every one: the preprocessing and the codecs exactly, the
request vectors against a real server on loopback, sent as the vectors' own bytes."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from protos.bundle import load_bundle
from protos.codec import Codec, decode, encode
from protos.errors import CodecError
from protos.preprocess import ImagePreprocess, preset
from protos.splitinfer.v1 import inference_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "conformance" / "vectors"
SERVICE = "/splitinfer.v1.SplitInference/"


def _generator():
    spec = importlib.util.spec_from_file_location("conformance_generate", ROOT / "conformance" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def _array(record: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record["base64"]), np.dtype(record["dtype"]).newbyteorder("<")).reshape(
        record["shape"]
    )


def _same_bits(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.dtype == expected.dtype and got.shape == expected.shape and got.tobytes() == expected.tobytes()


def test_committed_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path / "vectors")
    committed = sorted(p.relative_to(VECTORS) for p in VECTORS.rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path / "vectors") for p in written) == committed
    for path in written:
        relative = path.relative_to(tmp_path / "vectors")
        assert path.read_bytes() == (VECTORS / relative).read_bytes(), (
            f"conformance/vectors/{relative} is stale: run `python conformance/generate.py`"
        )


def test_the_vector_bundle_loads_and_its_head_feeds_its_tail() -> None:
    bundle = load_bundle(VECTORS / "bundle")
    manifest = bundle.manifest
    assert manifest.bundle_hash == _load("requests.json")["bundle_hash"]
    assert manifest.preprocess == preset("imagenet", 8) and manifest.batchable
    assert Codec.parse(manifest.codec).name == "int8+zstd"


# ----------------------------------------------------------------------------- preprocessing

PREPROCESS_CASES = [(image, case) for image in _load("preprocess.json")["images"] for case in image["cases"]]


@pytest.mark.parametrize(
    ("image", "case"), PREPROCESS_CASES, ids=[f"{i['name']}-{c['preset']}" for i, c in PREPROCESS_CASES]
)
def test_preprocessing_matches_the_vectors_bit_for_bit(image: dict, case: dict) -> None:
    with Image.open(io.BytesIO(base64.b64decode(image["bytes"]))) as img:
        assert img.format.lower() == image["format"] and img.mode == image["mode"]
        rgb = np.asarray(img.convert("RGB"))
    assert _same_bits(rgb, _array(image["rgb"]))
    pre = ImagePreprocess.from_dict(case["preprocess"])
    if case["preset"] != "file":
        assert pre == preset(case["preset"], pre.size)
    assert _same_bits(pre(rgb), _array(case["tensor"]).astype(np.float32))


# ------------------------------------------------------------------------------------- codecs

CODEC_CASES = _load("codecs.json")["cases"]


@pytest.mark.parametrize("case", CODEC_CASES, ids=[f"{c['array']}-{c['codec']}" for c in CODEC_CASES])
def test_codecs_match_the_vectors(case: dict) -> None:
    array, codec = _array(case["input"]), Codec.parse(case["codec"])
    if "sender_error" in case:
        with pytest.raises(CodecError) as refused:
            encode(case["array"], array, codec)
        assert str(refused.value) == case["sender_error"]
        return
    sent = encode(case["array"], array, codec)
    payload = base64.b64decode(case["payload"])
    if sent.compression == pb.COMPRESSION_ZSTD:
        assert zstandard.ZstdDecompressor().decompress(sent.data) == payload
    else:
        assert sent.data == payload
    fields = case["fields"]
    # A tensor of another dtype travels RAW, compressed as the codec says.
    named = Codec(codec.encoding if array.dtype == np.float32 else "fp32", codec.compression).name
    wire = _load("codecs.json")["names"][named]
    assert pb.Encoding.Name(sent.encoding) == fields["encoding"] == wire["encoding"]
    assert pb.Compression.Name(sent.compression) == fields["compression"] == wire["compression"]
    assert np.float32(sent.scale) == np.float32(fields["scale"]) and sent.zero_point == fields["zero_point"]
    assert list(np.float32(sent.channel_scales)) == list(np.float32(fields["channel_scales"]))
    assert list(sent.channel_zero_points) == fields["channel_zero_points"]
    # What a receiver decodes from the reference sender's message, exactly (NaN bits included).
    received = decode(pb.Tensor.FromString(base64.b64decode(case["tensor"])))
    assert _same_bits(received, _array(case["decoded"]))


# ----------------------------------------------------------------------------------- requests


@pytest.fixture(scope="module")
def vector_server() -> Iterator[str]:
    with serve(ServerConfig((VECTORS / "bundle",), host="127.0.0.1", port=0)) as running:
        yield running.address


REQUESTS = _load("requests.json")


@pytest.mark.parametrize("case", REQUESTS["requests"], ids=[c["name"] for c in REQUESTS["requests"]])
def test_the_server_answers_each_request_vector_its_status(vector_server: str, case: dict) -> None:
    with grpc.insecure_channel(vector_server) as channel:
        infer = channel.unary_unary(SERVICE + "Infer", response_deserializer=pb.InferResponse.FromString)
        try:
            reply = infer(base64.b64decode(case["request"]), timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code, message = err.code(), err.details()
            assert message, "a refusal says why"
    assert code.name == case["status"], case["name"]
    if code is grpc.StatusCode.OK:
        outputs = {t.name: decode(t) for t in reply.outputs}
        assert list(outputs) == list(case["outputs"])
        for name, record in case["outputs"].items():
            expected = _array(record)
            assert outputs[name].dtype == expected.dtype and outputs[name].shape == expected.shape
            if expected.dtype.kind == "f":
                atol = case.get("output_atol", REQUESTS["output_atol"])
                np.testing.assert_allclose(outputs[name], expected, rtol=0, atol=atol)
            else:
                assert np.array_equal(outputs[name], expected)


@pytest.mark.parametrize("case", REQUESTS["streams"], ids=[c["name"] for c in REQUESTS["streams"]])
def test_a_stream_answers_every_message_once_in_order(vector_server: str, case: dict) -> None:
    with grpc.insecure_channel(vector_server) as channel:
        stream = channel.stream_stream(SERVICE + "InferStream", response_deserializer=pb.InferResponse.FromString)
        replies = list(stream(iter([base64.b64decode(r) for r in case["requests"]]), timeout=10))
    got = [
        {
            "request_id": r.request_id,
            "status": grpc.StatusCode.OK.name if not r.HasField("error") else _code_name(r.error.code),
        }
        for r in replies
    ]
    assert got == case["replies"]


def _code_name(number: int) -> str:
    return next(code.name for code in grpc.StatusCode if code.value[0] == number)


def test_tokens_health_and_the_bearer_header(tmp_path: Path) -> None:
    """The metadata half of the contract: `authorization: Bearer <token>` on every call but health."""
    request = base64.b64decode(next(c for c in REQUESTS["requests"] if c["name"] == "codec-fp32")["request"])
    config = ServerConfig((VECTORS / "bundle",), host="127.0.0.1", port=0, tokens={"s3cret-token": "phone"})
    with serve(config) as running, grpc.insecure_channel(running.address) as channel:
        infer = channel.unary_unary(SERVICE + "Infer", response_deserializer=pb.InferResponse.FromString)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert infer(request, metadata=(("authorization", "Bearer s3cret-token"),), timeout=10).outputs
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "splitinfer.v1.SplitInference"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_the_pipeline_vector_from_photo_to_answer(vector_server: str) -> None:
    """Image bytes → the bundle's preprocessing → its head (onnxruntime) → a request → the answer."""
    pipeline = REQUESTS["pipeline"]
    bundle = load_bundle(VECTORS / "bundle")
    with Image.open(io.BytesIO(base64.b64decode(pipeline["image"]))) as img:
        image = bundle.manifest.preprocess(np.asarray(img.convert("RGB")))
    assert _same_bits(image, _array(pipeline["input"]).astype(np.float32))
    head = ort.InferenceSession(str(bundle.head_path), providers=["CPUExecutionProvider"])
    (act,) = head.run(["act"], {"image": image})
    atol = REQUESTS["output_atol"]
    np.testing.assert_allclose(act, _array(pipeline["act"]), rtol=0, atol=atol)
    request = pb.InferRequest(
        model_id=REQUESTS["model_id"], bundle_hash=REQUESTS["bundle_hash"], tensors=[encode("act", act, Codec())]
    )
    with grpc.insecure_channel(vector_server) as channel:
        reply = channel.unary_unary(SERVICE + "Infer", response_deserializer=pb.InferResponse.FromString)(
            request.SerializeToString(), timeout=10
        )
    assert [output.name for output in reply.outputs] == list(pipeline["outputs"])
    for output in reply.outputs:
        np.testing.assert_allclose(decode(output), _array(pipeline["outputs"][output.name]), rtol=0, atol=atol)


def test_the_bundle_hash_is_the_sha256_of_the_text_the_spec_describes() -> None:
    manifest = json.loads((VECTORS / "bundle" / "manifest.json").read_text())
    text = REQUESTS["bundle_hash_text"]
    assert hashlib.sha256(text.encode()).hexdigest() == manifest["bundle_hash"] == REQUESTS["bundle_hash"]
    covered = json.loads(text)
    assert set(covered) == {
        "format_version", "model_id", "cut_name", "head_file", "head_sha256", "tail_file", "tail_sha256",
        "inputs", "cut", "outputs", "preprocess", "batchable", "labels",
    }  # fmt: skip
    assert covered["cut"] == [[s["name"], s["dtype"], s["shape"]] for s in manifest["cut"]]
    assert all(covered[key] == manifest[key] for key in ("model_id", "head_sha256", "preprocess", "labels"))


@pytest.mark.parametrize("case", REQUESTS["fetches"]["calls"], ids=[c["name"] for c in REQUESTS["fetches"]["calls"]])
def test_the_server_answers_each_fetch_vector_its_status(vector_server: str, case: dict) -> None:
    with grpc.insecure_channel(vector_server) as channel:
        fetch = channel.unary_stream(SERVICE + "FetchBundleFile", response_deserializer=pb.FileChunk.FromString)
        try:
            chunks = list(fetch(base64.b64decode(case["request"]), timeout=10))
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert err.details(), "a refusal says why"
    assert code.name == case["status"], case["name"]
    if code is grpc.StatusCode.OK:
        data = (VECTORS / "bundle" / case["file"]).read_bytes()
        assert b"".join(c.data for c in chunks) == data[case["offset"] :]
        assert all(c.size == case["size"] == len(data) for c in chunks)
        assert all(len(c.data) <= REQUESTS["fetches"]["chunk_bytes"] for c in chunks)
        starts = [case["offset"] + sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
        assert [c.offset for c in chunks] == starts
