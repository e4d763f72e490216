"""Test bundles built without torch: a tiny ONNX model written with `onnx.helper`, cut in two with
`onnx.utils.extract_model`, and a manifest written with `protos.bundle`, the way the splitter's
export lays a bundle out.

The model is x[1,3,8,8] → Conv → Relu (`act`) → Conv (`c2`) → Add(c2, act) → GlobalAveragePool →
Flatten → logits[1,4]. Cutting at `act` is a chain cut; the skip connection makes `("act", "c2")`
a two-tensor (DAG) cut. `request_for` builds the InferRequest a device would send; `zstd_bomb` makes a hostile payload.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import zstandard
from onnx import TensorProto, helper, numpy_helper

from protos.bundle import HEAD_FILE, TAIL_FILE, Bundle, Manifest, TensorSpec, load_bundle, sha256_file, write_manifest
from protos.codec import Codec, encode
from protos.preprocess import ImagePreprocess
from protos.splitinfer.v1 import inference_pb2 as pb

INPUT = TensorSpec("x", "float32", (1, 3, 8, 8))
OUTPUT = TensorSpec("logits", "float32", (1, 4))
PREPROCESS = ImagePreprocess(size=8, resize=10)
# Every intermediate tensor has the input's spatial size and 4 channels.
_INTERMEDIATE_SHAPE = (1, 4, 8, 8)


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """The unsplit model; `seed` picks the weights (a different seed is a different export)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(4).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["act"]),
        helper.make_node("Conv", ["act", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "act"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT.name, TensorProto.FLOAT, list(INPUT.shape))],
        [helper.make_tensor_value_info(OUTPUT.name, TensorProto.FLOAT, list(OUTPUT.shape))],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def tiny_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal(INPUT.shape).astype(np.float32)


def reference_output(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The unsplit model's logits, by onnxruntime."""
    session = ort.InferenceSession(tiny_model(seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT.name], {INPUT.name: x})[0]


def build_bundle(
    directory: str | Path,
    *,
    cut: tuple[str, ...] = ("act",),
    model_id: str = "tiny",
    codec: str = "fp32",
    seed: int = 0,
    placement: str = "split",
    labels: tuple[str, ...] | None = None,
    result: str = "",
    version: int = 0,
) -> Bundle:
    """Writes a bundle into `directory`. placement: "split" (head and tail at `cut`), "edge" (the
    whole model is the head, no tail) or "cloud" (no head: the raw input is sent)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full = directory / "full.onnx"
    onnx.save(tiny_model(seed), full)
    head, tail = directory / HEAD_FILE, directory / TAIL_FILE
    if placement == "split":
        onnx.utils.extract_model(str(full), str(head), [INPUT.name], list(cut))
        onnx.utils.extract_model(str(full), str(tail), list(cut), [OUTPUT.name])
        cut_specs = tuple(TensorSpec(name, "float32", _INTERMEDIATE_SHAPE) for name in cut)
    elif placement == "edge":
        full.rename(head)
        cut_specs = (OUTPUT,)
    elif placement == "cloud":
        full.rename(tail)
        cut_specs = (INPUT,)
    else:
        raise ValueError(f"unknown placement {placement!r}")
    full.unlink(missing_ok=True)
    manifest = Manifest(
        model_id=model_id,
        cut_name="+".join(s.name for s in cut_specs),
        inputs=(INPUT,),
        cut=cut_specs,
        outputs=(OUTPUT,),
        codec=codec,
        head_sha256=sha256_file(head) if head.exists() else "",
        tail_sha256=sha256_file(tail) if tail.exists() else "",
        preprocess=PREPROCESS,
        labels=labels,
        result=result,
        version=version,
    )
    write_manifest(directory, manifest)
    return load_bundle(directory)


def loosen_cut(bundle: Bundle) -> Bundle:
    """Rewrites the manifest so the cut accepts any spatial size, which its tail.onnx does not:
    a request can then pass every check of the server and still fail in onnxruntime."""
    loose = tuple(dataclasses.replace(spec, shape=spec.shape[:2] + (-1, -1)) for spec in bundle.manifest.cut)
    write_manifest(bundle.path, dataclasses.replace(bundle.manifest, cut=loose))
    return load_bundle(bundle.path)


def request_for(bundle: Bundle, x: np.ndarray, codec: str = "fp32", request_id: str = "r") -> pb.InferRequest:
    """What a device holding `bundle` sends for input `x` (its head run by onnxruntime directly)."""
    names = [spec.name for spec in bundle.manifest.cut]
    if bundle.head_path is None:
        values = [x]
    else:
        session = ort.InferenceSession(str(bundle.head_path), providers=["CPUExecutionProvider"])
        values = session.run(names, {INPUT.name: x})
    return pb.InferRequest(
        request_id=request_id,
        model_id=bundle.manifest.model_id,
        bundle_hash=bundle.manifest.bundle_hash,
        tensors=[encode(name, value, Codec.parse(codec)) for name, value in zip(names, values)],
    )


def zstd_bomb(nbytes: int) -> bytes:
    """One zstd frame of `nbytes` zeros (a few KB), built in 1 MiB chunks so nothing holds them all."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = bytes(1 << 20)
    frame = b"".join(compressor.compress(chunk) for _ in range(nbytes // len(chunk)))
    return frame + compressor.flush()
