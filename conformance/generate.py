"""The conformance vectors of the splitinfer contract (docs/contract.md): what the Python reference
does, byte for byte, for a client in another language to test itself against.

    conformance/vectors/bundle/          a tiny bundle: manifest.json, head.onnx, tail.onnx
    conformance/vectors/preprocess.json  image file bytes → the input tensor, per preset
    conformance/vectors/codecs.json      codec names → wire enums; tensor → encoded fields and
                                         bytes, and the values a receiver decodes, per codec name
    conformance/vectors/requests.json    serialized InferRequest (to the bundle above) → the status
                                         the server answers, and the outputs of those it accepts
    conformance/vectors/manifests.json   manifest.json text → its bundle_hash (and the text hashed),
                                         its canonical form and the signature over it; edited
                                         manifests and bad signatures a client must refuse

Bytes are base64 strings. An array is {"dtype": numpy name, "shape": [...], "base64": its C-order
little-endian bytes}. `python conformance/generate.py` rewrites conformance/vectors
(`--out DIR` writes elsewhere); tests/conformance fails when the committed files are not what it
writes. Deterministic: fixed seeds, fixed crops, no clock.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import zstandard
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from protos.bundle import HEAD_FILE, MANIFEST, TAIL_FILE, Manifest, TensorSpec, sha256_file, write_manifest
from protos.codec import Codec, decode, encode, list_codecs
from protos.errors import BundleError, CodecError
from protos.preprocess import ImagePreprocess, as_rgb, preset
from protos.result_form import ResultForm
from protos.signing import (
    SIGNATURE_FILE,
    BundleSignatureError,
    load_signing_key,
    load_trusted_keys,
    manifest_sha256,
    sign_bundle,
    verify_bundle_signature,
)
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.transport import FILE_CHUNK_BYTES

VECTORS = Path(__file__).resolve().parent / "vectors"
MODEL_ID = "conformance-tiny"
INPUT = TensorSpec("image", "float32", (1, 3, 8, 8))
CUT = TensorSpec("act", "float32", (1, 4, 8, 8))
OUTPUT = TensorSpec("logits", "float32", (1, 3))
LABELS = ("circle", "square", "triangle")
BUNDLE_CODEC = "int8+zstd"
# Outputs of accepted requests are compared within this (onnxruntime sums in its own order).
OUTPUT_ATOL = 1e-4
# A lossy result's values may round the other way when the server's logits differ from the exact
# ones by OUTPUT_ATOL: a step of fp16 or int8 at these logits' size.
LOSSY_RESULT_ATOL = 5e-2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def array_json(array: np.ndarray) -> dict:
    array = np.asarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "base64": b64(np.ascontiguousarray(little).tobytes()),
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return path


# ------------------------------------------------------------------------------------ bundle


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(19)
    return {
        "conv_w": (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32),
        "conv_b": (rng.standard_normal(4) * 0.1).astype(np.float32),
        "fc_w": rng.standard_normal((4, 3)).astype(np.float32),
        "fc_b": (rng.standard_normal(3) * 0.1).astype(np.float32),
    }


def _model(name: str, nodes: list, inputs: TensorSpec, outputs: TensorSpec, weights: list[str]) -> onnx.ModelProto:
    """A model whose axis 0 takes any batch (the bundle is batchable), as onnx.helper writes it."""

    def info(spec: TensorSpec) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, ["N", *spec.shape[1:]])

    values = _weights()
    graph = helper.make_graph(
        nodes, name, [info(inputs)], [info(outputs)], [numpy_helper.from_array(values[w], w) for w in weights]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_bundle(directory: Path) -> Manifest:
    """image[N,3,8,8] → Conv → Relu → act (the cut) | GlobalAveragePool → Flatten → Gemm → logits[N,3]."""
    directory.mkdir(parents=True, exist_ok=True)
    head = _model(
        "head",
        [
            helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["pre"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["pre"], ["act"]),
        ],
        INPUT,
        CUT,
        ["conv_w", "conv_b"],
    )
    tail = _model(
        "tail",
        [
            helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        ],
        CUT,
        OUTPUT,
        ["fc_w", "fc_b"],
    )
    (directory / HEAD_FILE).write_bytes(head.SerializeToString(deterministic=True))
    (directory / TAIL_FILE).write_bytes(tail.SerializeToString(deterministic=True))
    manifest = Manifest(
        model_id=MODEL_ID,
        cut_name=CUT.name,
        inputs=(INPUT,),
        cut=(CUT,),
        outputs=(OUTPUT,),
        codec=BUNDLE_CODEC,
        head_sha256=sha256_file(directory / HEAD_FILE),
        tail_sha256=sha256_file(directory / TAIL_FILE),
        preprocess=preset("imagenet", INPUT.shape[-1]),
        batchable=True,
        labels=LABELS,
    )
    write_manifest(directory, manifest)
    return manifest


def tail_reference(act: np.ndarray) -> np.ndarray:
    """The tail's logits computed exactly (math.fsum), so the vectors do not depend on a CPU."""
    weights = _weights()
    pooled = [math.fsum(act[0, c].astype(np.float64).ravel().tolist()) / act[0, c].size for c in range(act.shape[1])]
    logits = [
        math.fsum([pooled[c] * float(weights["fc_w"][c, k]) for c in range(len(pooled))]) + float(weights["fc_b"][k])
        for k in range(len(LABELS))
    ]
    return np.asarray([logits], np.float32)


def head_reference(image: np.ndarray) -> np.ndarray:
    """The head's activation computed exactly (math.fsum over float32 products, which double
    precision holds exactly), rounded once to float32."""
    weights = _weights()
    w, b = weights["conv_w"].astype(np.float64), weights["conv_b"]
    padded = np.pad(image[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    _, height, width = image[0].shape
    act = np.empty(CUT.shape, np.float32)
    for o in range(CUT.shape[1]):
        for y in range(height):
            for x in range(width):
                terms = (padded[:, y : y + 3, x : x + 3] * w[o]).ravel().tolist()
                act[0, o, y, x] = max(0.0, math.fsum([*terms, float(b[o])]))
    return act


# ------------------------------------------------------------------------------ preprocessing

# (name, skimage.data photo, rows, columns, PIL mode, format): small crops whose sizes exercise
# the rounding rules (see each `why`).
_IMAGES = (
    ("astronaut-20x16", "astronaut", (40, 56), (180, 200), "RGB", "PNG", "imagenet 16: 20 × 18/16 = 22.5, rounds to 22"),
    ("coffee-153x120", "coffee", (100, 220), (200, 353), "RGB", "PNG", "shrinks 6.7× (antialiasing); crop left 3.5 → 3"),
    ("camera-45x70", "camera", (100, 170), (200, 245), "L", "PNG", "greyscale, portrait: crop top offset 6"),
    ("chelsea-40x40-rgba", "chelsea", (60, 100), (150, 190), "RGBA", "PNG", "alpha is dropped, not composited"),
    ("rocket-96x64-jpeg", "rocket", (100, 164), (250, 346), "RGB", "JPEG", "JPEG: `rgb` is Pillow's decoding"),
)  # fmt: skip


def _presets() -> list[tuple[str, ImagePreprocess]]:
    return [
        ("imagenet", preset("imagenet", 16)),
        ("unit", preset("unit", 16)),
        ("file", ImagePreprocess(size=12, resize=14, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))),
    ]


def _image_bytes(name: str, photo: str, rows: tuple, cols: tuple, mode: str, fmt: str) -> bytes:
    from skimage import data

    pixels = getattr(data, photo)()[rows[0] : rows[1], cols[0] : cols[1]]
    if mode == "RGBA":
        alpha = np.linspace(0, 255, pixels.shape[0] * pixels.shape[1]).astype(np.uint8).reshape(pixels.shape[:2])
        pixels = np.dstack([pixels, alpha])
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {"optimize": False}))
    return out.getvalue()


def preprocess_vectors() -> dict:
    images = []
    for name, photo, rows, cols, mode, fmt, why in _IMAGES:
        data = _image_bytes(name, photo, rows, cols, mode, fmt)
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
        cases = []
        for preset_name, pre in _presets():
            h, w = rgb.shape[:2]
            ratio = pre.resize / min(h, w)
            new_w, new_h = max(pre.size, round(w * ratio)), max(pre.size, round(h * ratio))
            resized = np.asarray(Image.fromarray(as_rgb(rgb)).resize((new_w, new_h), Image.BILINEAR))
            cases.append(
                {
                    "preset": preset_name,
                    "preprocess": pre.to_dict(),
                    "resized_size": [new_w, new_h],
                    "crop_left_top": [(new_w - pre.size) // 2, (new_h - pre.size) // 2],
                    "resized": array_json(resized),
                    "tensor": array_json(pre(rgb)),
                }
            )
        images.append(
            {
                "name": name,
                "why": why,
                "format": fmt.lower(),
                "mode": mode,
                "bytes": b64(data),
                "rgb": array_json(rgb),
                "cases": cases,
            }
        )
    return {
        "about": "image file bytes → manifest preprocess record → input tensor (docs/contract.md, Preprocessing). "
        "`rgb` is the decoded image (8-bit RGB), `resized` the image after the resize, before the crop; "
        "`tensor` must match exactly (float32 bits).",
        "presets": {
            "imagenet": "size S, resize round(S * 256 / 224), ImageNet mean and std",
            "unit": "size S, resize S, mean 0, std 1",
            "file": "a preprocess record given as a JSON file",
        },
        "images": images,
    }


# ------------------------------------------------------------------------------------ codecs


def _codec_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    relu = np.maximum(rng.standard_normal((1, 4, 2, 3)), 0) * np.array([0.01, 1.0, 30.0, 500.0]).reshape(1, 4, 1, 1)
    return {
        "relu-activation": relu.astype(np.float32),
        "signed-odd-count": (rng.standard_normal((1, 3, 5)) * 2).astype(np.float32),
        "vector": np.linspace(-1.0, 2.0, 7, dtype=np.float32),
        "zeros": np.zeros((1, 2, 2, 2), np.float32),
        "scalar": np.array(3.5, np.float32),
        "fp16-specials": np.array([np.nan, np.inf, -np.inf, 65504.0, -65504.0, 6e-8, 1 / 3, 0.0], np.float32),
        "beyond-fp16": np.array([1.0, 70000.0], np.float32),
        "int64-indices": np.arange(6, dtype=np.int64).reshape(2, 3) * 1000,
    }


def _tensor_fields(tensor: pb.Tensor) -> dict:
    return {
        "name": tensor.name,
        "dtype": pb.DType.Name(tensor.dtype),
        "shape": list(tensor.shape),
        "encoding": pb.Encoding.Name(tensor.encoding),
        "compression": pb.Compression.Name(tensor.compression),
        # float32 on the wire: these are the float32 values, written exactly.
        "scale": float(np.float32(tensor.scale)),
        "zero_point": tensor.zero_point,
        "channel_axis": tensor.channel_axis,
        "channel_scales": [float(np.float32(s)) for s in tensor.channel_scales],
        "channel_zero_points": list(tensor.channel_zero_points),
    }


def codec_vectors() -> dict:
    names = {}
    for codec in list_codecs():
        probe = encode("probe", np.zeros(1, np.float32), codec)
        names[codec.name] = {
            "encoding": pb.Encoding.Name(probe.encoding),
            "compression": pb.Compression.Name(probe.compression),
            "zstd_level": codec.level if codec.compression == "zstd" else None,
        }
    cases = []
    for array_name, array in _codec_arrays().items():
        for codec in list_codecs():
            case: dict = {"array": array_name, "codec": codec.name, "input": array_json(array)}
            try:
                tensor = encode(array_name, array, codec)
            except CodecError as err:
                case["sender_error"] = str(err)
                cases.append(case)
                continue
            payload = encode(array_name, array, Codec(codec.encoding, "none")).data
            case.update(
                {
                    "fields": _tensor_fields(tensor),
                    "payload": b64(payload),
                    "data": b64(tensor.data),
                    "tensor": b64(tensor.SerializeToString(deterministic=True)),
                    "decoded": array_json(decode(tensor)),
                }
            )
            cases.append(case)
    return {
        "about": "codec name → wire enums; an array → the reference sender's Tensor (fields; `payload`: the "
        "encoded bytes before compression, canonical; `data`: the bytes sent, zstd level 1 by python-zstandard "
        f"{zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION}), not canonical: compare decompress(data) "
        "with payload) and the values a receiver decodes (`decoded`, exact). `sender_error`: the reference "
        "sender refuses the array with this codec. Tensors of a dtype other than float32 travel RAW whatever "
        "the codec.",
        "names": names,
        "dtypes": {
            "float32": "DTYPE_FLOAT32",
            "float16": "DTYPE_FLOAT16",
            "int8": "DTYPE_INT8",
            "uint8": "DTYPE_UINT8",
            "int32": "DTYPE_INT32",
            "int64": "DTYPE_INT64",
            "bool": "DTYPE_BOOL",
        },
        "cases": cases,
    }


# ---------------------------------------------------------------------------------- requests


def _activation() -> np.ndarray:
    values = np.random.default_rng(11).standard_normal(CUT.shape).astype(np.float32)
    return np.maximum(values, 0) * np.array([0.5, 1.0, 2.0, 4.0], np.float32).reshape(1, 4, 1, 1)


def _request(
    manifest: Manifest, codec: str = "fp32", request_id: str = "r", **tensor_fields: object
) -> pb.InferRequest:
    tensor = encode(CUT.name, _activation(), Codec.parse(codec))
    for field, value in tensor_fields.items():
        if field in ("shape", "channel_scales", "channel_zero_points"):
            del getattr(tensor, field)[:]
            getattr(tensor, field).extend(value)  # type: ignore[arg-type]
        else:
            setattr(tensor, field, value)
    return pb.InferRequest(
        request_id=request_id, model_id=manifest.model_id, bundle_hash=manifest.bundle_hash, tensors=[tensor]
    )


def _with(request: pb.InferRequest, **fields: object) -> pb.InferRequest:
    changed = pb.InferRequest()
    changed.CopyFrom(request)
    for field, value in fields.items():
        if field == "tensors":
            del changed.tensors[:]
            changed.tensors.extend(value)  # type: ignore[arg-type]
        elif field == "result":
            changed.result.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(changed, field, value)
    return changed


def _invalid_requests(manifest: Manifest) -> list[tuple[str, str, pb.InferRequest | bytes]]:
    """(name, expected status, request): every refusal docs/contract.md lists for a request's bytes."""
    good = _request(manifest)
    act = _activation()
    raw = act.tobytes()
    tensor = good.tensors[0]
    renamed = pb.Tensor()
    renamed.CopyFrom(tensor)
    renamed.name = "bogus"
    zstd = zstandard.ZstdCompressor(level=1)
    return [
        ("not-a-protobuf", "INVALID_ARGUMENT", b"\xff\xff\xff\xff"),
        ("unknown-model", "NOT_FOUND", _with(good, model_id="no-such-model")),
        ("empty-model-id", "NOT_FOUND", _with(good, model_id="")),
        ("bundle-hash-mismatch", "FAILED_PRECONDITION", _with(good, bundle_hash="0" * 64)),
        ("no-bundle-hash", "FAILED_PRECONDITION", _with(good, bundle_hash="")),
        ("no-tensors", "INVALID_ARGUMENT", _with(good, tensors=[])),
        ("unexpected-tensor-name", "INVALID_ARGUMENT", _with(good, tensors=[renamed])),
        ("extra-tensor", "INVALID_ARGUMENT", _with(good, tensors=[tensor, renamed])),
        ("duplicated-tensor", "INVALID_ARGUMENT", _with(good, tensors=[tensor, tensor])),
        ("dtype-float16", "INVALID_ARGUMENT", _request(manifest, dtype=pb.DTYPE_FLOAT16)),
        ("dtype-unspecified", "INVALID_ARGUMENT", _request(manifest, dtype=pb.DTYPE_UNSPECIFIED)),
        ("dtype-unknown-99", "INVALID_ARGUMENT", _request(manifest, dtype=99)),
        ("batch-of-2", "INVALID_ARGUMENT", _request(manifest, shape=[2, 4, 8, 8], data=raw + raw)),
        ("rank-3", "INVALID_ARGUMENT", _request(manifest, shape=[4, 8, 8])),
        ("payload-short", "INVALID_ARGUMENT", _request(manifest, data=raw[:-4])),
        ("payload-long", "INVALID_ARGUMENT", _request(manifest, data=raw + bytes(4))),
        ("encoding-unspecified", "INVALID_ARGUMENT", _request(manifest, encoding=pb.ENCODING_UNSPECIFIED)),
        ("encoding-unknown-77", "INVALID_ARGUMENT", _request(manifest, encoding=77)),
        ("compression-unspecified", "INVALID_ARGUMENT", _request(manifest, compression=pb.COMPRESSION_UNSPECIFIED)),
        ("compression-unknown-9", "INVALID_ARGUMENT", _request(manifest, compression=9)),
        ("int8-scale-0", "INVALID_ARGUMENT", _request(manifest, "int8", scale=0.0)),
        ("int8-scale-negative", "INVALID_ARGUMENT", _request(manifest, "int8", scale=-0.5)),
        ("int8-scale-nan", "INVALID_ARGUMENT", _request(manifest, "int8", scale=float("nan"))),
        ("int8-scale-inf", "INVALID_ARGUMENT", _request(manifest, "int8", scale=float("inf"))),
        ("int8-zero-point-1000", "INVALID_ARGUMENT", _request(manifest, "int8", zero_point=1000)),
        ("int8-zero-point-128", "INVALID_ARGUMENT", _request(manifest, "int8", zero_point=128)),
        ("int8-zero-point--129", "INVALID_ARGUMENT", _request(manifest, "int8", zero_point=-129)),
        ("int8ch-3-scales", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_scales=[1.0, 1.0, 1.0])),
        ("int8ch-no-zero-points", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_zero_points=[])),
        ("int8ch-scale-0", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_scales=[0.1, 0.0, 0.1, 0.1])),
        ("int8ch-zero-point-128", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_zero_points=[0, 128, 0, 0])),
        ("int8ch-channel-axis-4", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_axis=4)),
        ("int8ch-channel-axis--1", "INVALID_ARGUMENT", _request(manifest, "int8ch", channel_axis=-1)),
        ("int4ch-zero-point-16", "INVALID_ARGUMENT", _request(manifest, "int4ch", channel_zero_points=[0, 16, 0, 0])),
        ("int4ch-zero-point--1", "INVALID_ARGUMENT", _request(manifest, "int4ch", channel_zero_points=[0, -1, 0, 0])),
        ("int4ch-payload-as-int8", "INVALID_ARGUMENT", _request(manifest, "int4ch", data=bytes(act.size))),
        ("result-top-4-of-3", "INVALID_ARGUMENT", _with(good, result=pb.ResultSpec(top_k=4))),
        ("result-top-negative", "INVALID_ARGUMENT", _with(good, result=pb.ResultSpec(top_k=-1))),
        ("result-encoding-77", "INVALID_ARGUMENT", _with(good, result=pb.ResultSpec(encoding=77))),
        ("result-compression-9", "INVALID_ARGUMENT", _with(good, result=pb.ResultSpec(compression=9))),
        ("zstd-not-a-frame", "INVALID_ARGUMENT", _request(manifest, compression=pb.COMPRESSION_ZSTD, data=raw)),
        ("zstd-empty", "INVALID_ARGUMENT", _request(manifest, compression=pb.COMPRESSION_ZSTD, data=b"")),
        (
            "zstd-two-frames",
            "INVALID_ARGUMENT",
            _request(
                manifest,
                compression=pb.COMPRESSION_ZSTD,
                data=zstd.compress(raw[: len(raw) // 2]) + zstd.compress(raw[len(raw) // 2 :]),
            ),
        ),
        (
            "zstd-trailing-bytes",
            "INVALID_ARGUMENT",
            _request(manifest, compression=pb.COMPRESSION_ZSTD, data=zstd.compress(raw) + b"\0"),
        ),
        (
            "zstd-trailing-empty-frame",
            "INVALID_ARGUMENT",
            _request(manifest, compression=pb.COMPRESSION_ZSTD, data=zstd.compress(raw) + zstd.compress(b"")),
        ),
        (
            "zstd-declares-too-much",
            "INVALID_ARGUMENT",
            _request(manifest, compression=pb.COMPRESSION_ZSTD, data=zstd.compress(raw + bytes(4))),
        ),
        (
            "zstd-inflates-too-much-undeclared",
            "INVALID_ARGUMENT",
            _request(
                manifest,
                compression=pb.COMPRESSION_ZSTD,
                data=zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(1 << 20)),
            ),
        ),
        (
            "zstd-truncated",
            "INVALID_ARGUMENT",
            _request(manifest, compression=pb.COMPRESSION_ZSTD, data=zstd.compress(raw)[:-2]),
        ),
    ]


def _valid_requests(manifest: Manifest) -> list[tuple[str, pb.InferRequest]]:
    valid = [(f"codec-{codec.name}", _request(manifest, codec.name)) for codec in list_codecs()]
    # Any axis is valid on the wire, not only the one the reference sender picks (axis 1).
    last_axis = encode(CUT.name, np.moveaxis(_activation(), 3, 1), Codec("int8ch"))
    valid.append(
        (
            "int8ch-channel-axis-3",
            _request(
                manifest,
                "int8ch",
                channel_axis=3,
                channel_scales=last_axis.channel_scales,
                channel_zero_points=last_axis.channel_zero_points,
                data=np.moveaxis(np.frombuffer(last_axis.data, np.int8).reshape(1, 8, 4, 8), 1, 3).tobytes(),
            ),
        )
    )
    valid.append(
        (
            "zstd-frame-without-content-size",
            _request(
                manifest,
                compression=pb.COMPRESSION_ZSTD,
                data=zstandard.ZstdCompressor(level=3, write_content_size=False).compress(_activation().tobytes()),
            ),
        )
    )
    valid.append(("empty-request-id", _request(manifest, request_id="")))
    for form in ("fp16+zstd", "int8", "top2", "top3:fp16"):
        valid.append((f"result-{form}", _with(_request(manifest), result=ResultForm.parse(form).to_wire())))
    # A ResultSpec present with every field unset asks for raw fp32 (not the bundle's default).
    valid.append(("result-all-unset", _with(_request(manifest), result=pb.ResultSpec())))
    return valid


def _fetch_vectors(manifest: Manifest, directory: Path) -> dict:
    """FetchBundleFile calls to the bundle in `directory` and what the server answers."""

    def fetch(name: str, status: str, file: str, offset: int = 0, **fields: str) -> dict:
        request = pb.FetchBundleFileRequest(
            model_id=manifest.model_id, bundle_hash=manifest.bundle_hash, file=file, offset=offset
        )
        for field, value in fields.items():
            setattr(request, field, value)
        item = {"name": name, "status": status, "request": b64(request.SerializeToString(deterministic=True))}
        if status == "OK":
            item |= {"file": file, "offset": offset, "size": (directory / file).stat().st_size}
        return item

    tail_size = (directory / TAIL_FILE).stat().st_size
    return {
        "about": "FetchBundleFile calls (`request`: a serialized splitinfer.v1.FetchBundleFileRequest) and the "
        "status the server answers. An accepted one is the file `file` of bundle/ from byte `offset`: the "
        "chunks' data, joined, are its bytes from there, each chunk's `offset` where its data starts and "
        "`size` the file's size; at most FILE_CHUNK_BYTES of data a chunk.",
        "chunk_bytes": FILE_CHUNK_BYTES,
        "calls": [
            fetch("head", "OK", HEAD_FILE),
            fetch("manifest-from-offset", "OK", "manifest.json", 100),
            fetch("tail-at-its-end", "OK", TAIL_FILE, tail_size),
            fetch("unknown-model", "NOT_FOUND", HEAD_FILE, model_id="nope"),
            fetch("unknown-bundle-hash", "NOT_FOUND", HEAD_FILE, bundle_hash="0" * 64),
            fetch("unsigned-bundle-signature", "NOT_FOUND", "manifest.sig"),
            fetch("a-path", "INVALID_ARGUMENT", "../requests.json"),
            fetch("a-file-not-of-the-bundle", "INVALID_ARGUMENT", "full.onnx"),
            fetch("offset-beyond-the-file", "OUT_OF_RANGE", TAIL_FILE, tail_size + 1),
            {"name": "not-a-message", "status": "INVALID_ARGUMENT", "request": b64(b"\xff\xff\xff")},
        ],
    }


def request_vectors(manifest: Manifest, directory: Path) -> dict:
    def entry(name: str, status: str, request: pb.InferRequest | bytes) -> dict:
        """One vector; an accepted one with the outputs the reference computes for it."""
        data = request if isinstance(request, bytes) else request.SerializeToString(deterministic=True)
        item = {"name": name, "status": status, "request": b64(data)}
        if status == "OK":
            request = pb.InferRequest.FromString(data)
            logits = tail_reference(decode(request.tensors[0]))
            form = ResultForm.from_wire(request.result) if request.HasField("result") else manifest.result_form
            # The values a receiver decodes from the reference's encoding of the exact logits.
            item["outputs"] = {t.name: array_json(decode(t)) for t in form.encode({OUTPUT.name: logits})}
            if form.codec.lossy:
                item["output_atol"] = LOSSY_RESULT_ATOL
        return item

    good = _request(manifest, request_id="a")
    bad = _request(manifest, request_id="a", encoding=pb.ENCODING_UNSPECIFIED)
    photo = _image_bytes("pipeline", "astronaut", (40, 50), (180, 192), "RGB", "PNG")
    with Image.open(io.BytesIO(photo)) as img:
        image = manifest.preprocess(np.asarray(img.convert("RGB")))
    act = head_reference(image)
    stream = [good, bad, _request(manifest, request_id="b"), good]
    return {
        "about": "requests to the bundle in bundle/ (serve it: `splitinfer serve conformance/vectors/bundle`). "
        "`request`: a serialized splitinfer.v1.InferRequest for Infer; `status`: the gRPC status the server "
        "answers. Accepted requests list each output's decoded values (within `output_atol`, or the "
        "request's own `output_atol` for a lossy result form): RAW fp32 unless the request's ResultSpec "
        "asks otherwise (top-k indices exact). `streams`: messages sent in order on one InferStream and the replies that come back, in "
        "order (a failed message is answered in-band: `error.code`, the stream stays open).",
        "model_id": manifest.model_id,
        "bundle_hash": manifest.bundle_hash,
        # The exact text whose SHA-256 bundle_hash is (docs/contract.md §1), for a client that verifies it.
        "bundle_hash_text": manifest.bundle_hash_text,
        "output_atol": OUTPUT_ATOL,
        "requests": [entry(name, "OK", request) for name, request in _valid_requests(manifest)]
        # Field 99 (varint 1), which v1 does not define: proto3 receivers skip fields they do not know.
        + [entry("unknown-field-99", "OK", _request(manifest).SerializeToString(deterministic=True) + b"\x98\x06\x01")]
        + [entry(*case) for case in _invalid_requests(manifest)],
        "pipeline": {
            "about": "the whole path for this bundle: `image` (PNG bytes) → its manifest's preprocess → "
            "`input` (exact) → head.onnx → `act` (within output_atol) → a request of it in any codec → "
            "`outputs` of the raw fp32 act (within output_atol)",
            "image": b64(photo),
            "input": array_json(image),
            "act": array_json(act),
            "outputs": {OUTPUT.name: array_json(tail_reference(act))},
        },
        "fetches": _fetch_vectors(manifest, directory),
        "streams": [
            {
                "name": "duplicate-request-ids",
                "requests": [b64(r.SerializeToString(deterministic=True)) for r in stream],
                "replies": [
                    {"request_id": "a", "status": "OK"},
                    {"request_id": "a", "status": "INVALID_ARGUMENT"},
                    {"request_id": "b", "status": "OK"},
                    {"request_id": "a", "status": "OK"},
                ],
            }
        ],
    }


# --------------------------------------------------------------------------------- manifests

# Test keys, derived from fixed phrases so that the vectors are reproducible (Ed25519 signing is
# deterministic): `signer` signs the manifests below, `stranger` is a key nobody trusts.
KEY_SEEDS = {"signer": b"splitinfer conformance signer", "stranger": b"splitinfer conformance stranger"}
# A manifest edited by hand: numbers Python's json reads as floats (1.0, 1E5, 5e-324) or as ints
# of any size, and keys and labels beyond ASCII, one of them beyond the BMP (U+1D11E sorts after
# U+E000 by code point, before it by UTF-16 code unit).
HAND_EDITED_VERIFICATION = (
    '{"max_abs_error": 1.0, "scale": 1E5, "tiny": 5e-324, "small": 0.00001, "big": 1e16, '
    '"negative_zero": -0.0, "int_zero": -0, "huge_int": 1180591620717411303424, "third": 0.3333333333333333, '
    '"\\ue000": "private use", "\\ud834\\udd1e": "clef", "caf\\u00e9": "caf\\u00e9 \\u2615"}'
)


def _key_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """The test keys as PEM files, NAME.key and NAME.pub (what `splitinfer signing-key` writes):
    name → (private key file, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    keys = {}
    for name, phrase in KEY_SEEDS.items():
        private = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(phrase).digest())
        key_path = directory / f"{name}.key"
        key_path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_path.with_suffix(".pub").write_bytes(public)
        keys[name] = (key_path, public.decode("ascii"))
    return keys


def _bundle_copy(source: Path, directory: Path, manifest_text: str) -> Path:
    directory.mkdir(parents=True)
    for name in (HEAD_FILE, TAIL_FILE):
        shutil.copyfile(source / name, directory / name)
    (directory / MANIFEST).write_text(manifest_text)
    return directory


def _manifest_case(name: str, text: str, source: Path, work: Path, signer: Path) -> dict:
    """One manifest.json text and what the reference makes of it: the bundle loads, and this is its
    hash, its canonical form and the manifest.sig `signer` writes for it."""
    bundle = _bundle_copy(source, work / name, text)
    manifest = Manifest.from_dict(json.loads(text))
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == manifest_sha256(bundle)
    signature = sign_bundle(bundle, load_signing_key(signer)).read_text()
    return {
        "name": name,
        "manifest": text,
        "bundle_hash": manifest.bundle_hash,
        "bundle_hash_text": manifest.bundle_hash_text if manifest.format_version == 2 else None,
        "canonical": canonical,
        "manifest_sha256": manifest_sha256(bundle),
        "signature": signature,
    }


def _edited(manifest: Manifest, field_name: str) -> Manifest:
    """`manifest` with one field changed to another valid value (so that only the hash refuses it)."""
    value = getattr(manifest, field_name)
    renamed = (dataclasses.replace(value[0], name="edited"),) if field_name in ("inputs", "cut", "outputs") else None
    other_digest = value[:-1] + ("0" if value[-1:] != "0" else "1") if field_name.endswith("_sha256") else None
    edits = {
        "format_version": 1,
        "model_id": f"{value}-edited",
        "cut_name": f"{value}-edited",
        "inputs": renamed,
        "cut": renamed,
        "outputs": renamed,
        "codec": "fp32",
        "head_sha256": other_digest,
        "tail_sha256": other_digest,
        "preprocess": dataclasses.replace(value, mean=(0.5, *value.mean[1:])) if field_name == "preprocess" else None,
        "verification": {"max_abs_error": 0.5},
        "head_file": "head.ort",
        "batchable": not value,
        "tail_file": "tail-1.onnx",
        "labels": (value[1], value[0], *value[2:]) if field_name == "labels" else None,
        "result": "top1",
        "version": value + 1 if field_name == "version" else None,
    }
    return dataclasses.replace(manifest, **{field_name: edits[field_name]})


def manifest_vectors(bundle_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = _key_files(work)
        signer = keys["signer"][0]
        original = (bundle_dir / MANIFEST).read_text()
        exported = Manifest.from_dict(json.loads(original))
        unit = dataclasses.replace(
            exported,
            preprocess=preset("unit", INPUT.shape[-1]),
            labels=("cercle", "carr\u00e9", "\u25b3 triangle"),
            result="top2:fp16",
        )
        hand_edited = dataclasses.replace(exported, model_id="conformance-tiny-\u00e9dit\u00e9")
        # A cut tensor only clamps read (covered by the hash with its range), and a versioned bundle.
        clamped = dataclasses.replace(
            exported,
            cut=tuple(dataclasses.replace(spec, clamp=(0.0, 6.0)) for spec in exported.cut),
            inputs=tuple(dataclasses.replace(spec, clamp=(-0.5, None)) for spec in exported.inputs),
            version=3,
        )
        cases = [
            _manifest_case("exported", original, bundle_dir, work, signer),
            _manifest_case(
                "unit-preset-labels-result", json.dumps(unit.to_dict(), indent=2) + "\n", bundle_dir, work, signer
            ),
            _manifest_case(
                "clamps-and-version", json.dumps(clamped.to_dict(), indent=2) + "\n", bundle_dir, work, signer
            ),
            _manifest_case(
                "hand-edited-numbers",
                json.dumps(hand_edited.to_dict(), indent=2).replace(
                    '"verification": {}', f'"verification": {HAND_EDITED_VERIFICATION}'
                ),
                bundle_dir,
                work,
                signer,
            ),
            _manifest_case(
                "format-1",
                json.dumps(dataclasses.replace(exported, format_version=1).to_dict(), indent=2) + "\n",
                bundle_dir,
                work,
                signer,
            ),
        ]
        signature = cases[0]["signature"]
        tampered = []
        for field_name in (k for k in json.loads(original) if k != "bundle_hash"):
            # What a forger who read the spec writes (the hash made to match again), and the edit alone.
            rehashed = _edited(exported, field_name).to_dict()
            edited = {**rehashed, "bundle_hash": exported.bundle_hash}
            try:
                Manifest.from_dict(edited)
                refused_by_hash = False
            except BundleError as err:
                assert "bundle_hash" in str(err), err
                refused_by_hash = True
            bundle = _bundle_copy(bundle_dir, work / f"tampered-{field_name}", json.dumps(rehashed, indent=2))
            (bundle / SIGNATURE_FILE).write_text(signature)
            try:
                verify_bundle_signature(bundle, load_trusted_keys([keys["signer"][0].with_suffix(".pub")]))
                raise AssertionError(f"an edited {field_name} passed the signature")
            except BundleSignatureError as err:
                assert "changed after it was signed" in str(err), err
            tampered.append(
                {
                    "field": field_name,
                    "manifest": json.dumps(edited, indent=2),
                    "refused_by_hash": refused_by_hash,
                    "rehashed": json.dumps(rehashed, indent=2),
                }
            )
        bad_signatures = _bad_signatures(signature, keys, bundle_dir)
    return {
        "about": "manifest.json texts (`manifest`) and what a client makes of each (docs/contract.md §1): "
        "`bundle_hash_text` (format 2: the exact text whose SHA-256 is `bundle_hash`), `canonical` (the "
        "manifest re-serialized as Python's json.dumps(sort_keys=True, separators=(',', ':'), "
        "ensure_ascii=True)) and `manifest_sha256` (its SHA-256, what manifest.sig signs), and `signature` "
        "(the manifest.sig that `keys.signer` writes for it). `tampered`: the exported manifest with one "
        "field edited, `refused_by_hash` when its bundle_hash no longer matches (codec and verification are "
        "not hashed), and `rehashed`, the same edit with bundle_hash recomputed: the exported manifest's "
        "signature refuses every one. `bad_signatures`: manifest.sig records for the exported manifest that "
        "a client trusting only `keys.signer` refuses, each with why.",
        "keys": {name: {"public_pem": pem} for name, (_, pem) in keys.items()},
        "signing_context": b64(b"splitinfer bundle manifest v1\0"),
        "manifests": cases,
        "tampered": tampered,
        "bad_signatures": bad_signatures,
    }


def _bad_signatures(signature: str, keys: dict[str, tuple[Path, str]], bundle_dir: Path) -> list[dict]:
    record = json.loads(signature)
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[0] ^= 1
    with tempfile.TemporaryDirectory() as tmp:
        stranger = sign_bundle(
            _bundle_copy(bundle_dir, Path(tmp) / "bundle", (bundle_dir / MANIFEST).read_text()),
            load_signing_key(keys["stranger"][0]),
        ).read_text()
    return [
        {
            "name": "flipped-bit",
            "why": "does not verify",
            "signature": json.dumps({**record, "signature": b64(bytes(raw))}),
        },
        {"name": "untrusted-key", "why": "signed by a key not trusted", "signature": stranger},
        {
            "name": "other-digest",
            "why": "signs another manifest",
            "signature": json.dumps({**record, "manifest_sha256": "0" * 64}),
        },
        {"name": "other-algorithm", "why": "not ed25519", "signature": json.dumps({**record, "algorithm": "rsa"})},
        {"name": "not-base64", "why": "malformed", "signature": json.dumps({**record, "signature": "not base64!"})},
        {"name": "not-json", "why": "malformed", "signature": "ed25519 " + record["signature"]},
    ]


# ---------------------------------------------------------------------------------------- all


def generate(out: Path) -> list[Path]:
    """Writes every vector file under `out` (replacing what is there); returns them."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = write_bundle(out / "bundle")
    written = [out / "bundle" / name for name in ("manifest.json", HEAD_FILE, TAIL_FILE)]
    written.append(write_json(out / "preprocess.json", preprocess_vectors()))
    written.append(write_json(out / "codecs.json", codec_vectors()))
    written.append(write_json(out / "requests.json", request_vectors(manifest, out / "bundle")))
    written.append(write_json(out / "manifests.json", manifest_vectors(out / "bundle")))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=VECTORS, help=f"folder to write (default {VECTORS})")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
