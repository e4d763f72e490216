"""The .proto is the whole contract: a client generated from it alone, with none of splitinfer's
code (its own protoc run, another include root, so another module name), calls the server and
gets the unsplit model's answer. That is what a client in another language would do."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from bundles import reference_output, tiny_input
from grpc_tools import protoc

from protos.generate import PROTO_ROOT

CLIENT = r"""
import importlib.abc, json, sys
import numpy as np, onnxruntime as ort

class NoSplitinfer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"protos", "edge_runtime", "cloud_runtime", "splitter", "splitinfer"}:
            raise ImportError(f"the independent client must not import {name}")
sys.meta_path.insert(0, NoSplitinfer())

import grpc
import inference_pb2, inference_pb2_grpc

address, bundle, x_path, out_path = sys.argv[1:]
manifest = json.load(open(f"{bundle}/manifest.json"))
x = np.load(x_path)
head = ort.InferenceSession(f"{bundle}/head.onnx", providers=["CPUExecutionProvider"])
names = [t["name"] for t in manifest["cut"]]
tensors = [
    inference_pb2.Tensor(
        name=name, dtype=inference_pb2.DTYPE_FLOAT32, shape=list(value.shape),
        encoding=inference_pb2.ENCODING_RAW, compression=inference_pb2.COMPRESSION_NONE,
        data=value.astype("<f4").tobytes(),
    )
    for name, value in zip(names, head.run(names, {manifest["inputs"][0]["name"]: x}))
]
request = inference_pb2.InferRequest(
    request_id="independent-1", model_id=manifest["model_id"], bundle_hash=manifest["bundle_hash"], tensors=tensors
)
with grpc.insecure_channel(address) as channel:
    reply = inference_pb2_grpc.SplitInferenceStub(channel).Infer(request, timeout=10)
assert reply.request_id == "independent-1"
out = reply.outputs[0]
assert out.dtype == inference_pb2.DTYPE_FLOAT32 and out.encoding == inference_pb2.ENCODING_RAW
np.save(out_path, np.frombuffer(out.data, "<f4").reshape(list(out.shape)))
"""


def test_a_client_generated_from_the_proto_alone(tmp_path: Path, tiny_bundle: Path, tiny_server: str) -> None:
    source = tmp_path / "x"
    source.mkdir()
    shutil.copy(PROTO_ROOT / "protos/splitinfer/v1/inference.proto", source / "inference.proto")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    args = [
        "protoc",
        f"-I{source}",
        f"--python_out={stubs}",
        f"--grpc_python_out={stubs}",
        str(source / "inference.proto"),
    ]
    assert protoc.main(args) == 0
    assert "import inference_pb2" in (stubs / "inference_pb2_grpc.py").read_text()

    x = tiny_input(3)
    np.save(tmp_path / "x.npy", x)
    (stubs / "client.py").write_text(CLIENT)
    subprocess.run(
        [
            sys.executable,
            str(stubs / "client.py"),
            tiny_server,
            str(tiny_bundle),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npy"),
        ],
        cwd=stubs,
        check=True,
        timeout=60,
    )
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (1, 4)
    np.testing.assert_allclose(out, reference_output(x), atol=1e-5, rtol=0)
