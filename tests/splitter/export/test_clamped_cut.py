"""A cut before a ReLU6, end to end: the export records the range in the manifest (covered by its
hash), the edge clamps to it before int8 encoding, and the server's answer is the unsplit model's.
Real export, a real server on loopback, onnxruntime on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from protos.codec import Codec, decode, encode
from splitter.export.bundle import export_bundle
from splitter.graph.cuts import find_cut
from splitter.pipeline import model_cuts
from splitter.sources import ModelSource

PRE_ACTIVATION_CUT = "features.2.conv.1.0/Conv"  # a depthwise conv whose only reader is its ReLU6


def test_a_pre_activation_cut_is_sent_clamped_and_answers_as_the_unsplit_model(
    mobilenet_source: ModelSource, mobilenet_samples, tmp_path: Path
) -> None:
    cut = find_cut(model_cuts(mobilenet_source), PRE_ACTIVATION_CUT)
    bundle, _ = export_bundle(mobilenet_source, cut, tmp_path / "b", mobilenet_samples, codec="int8+zstd")
    (tensor,) = bundle.manifest.cut
    assert tensor.clamp == (0.0, 6.0)
    assert bundle.manifest.cut_clamps == {tensor.name: (0.0, 6.0)}
    full = ort.InferenceSession(mobilenet_source.model.SerializeToString(), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(bundle.path / bundle.manifest.tail_file), providers=["CPUExecutionProvider"])
    int8 = Codec.parse("int8+zstd")
    errors, unclamped_errors = [], []
    with serve(ServerConfig([bundle.path], threads=1)) as running, EdgeClient(bundle.path, running.address) as client:
        for _, feed in mobilenet_samples:
            (image,) = feed.values()
            activation = client.head.run({"input": image})
            assert activation[tensor.name].min() < 0  # the head sends what its ReLU6 would clip
            (wire,) = client.encoder.encode(activation, int8, cut.name, bundle.manifest.cut_clamps)
            sent = decode(wire)
            assert sent.min() >= 0.0 and sent.max() <= 6.0 + 1e-6
            result = client.infer(image)
            expected = full.run(None, feed)[0]
            assert int(np.argmax(result.outputs["output"])) == int(np.argmax(expected))
            errors.append(np.abs(result.outputs["output"] - expected).max())
            unclamped = tail.run(None, {tensor.name: decode(encode(tensor.name, activation[tensor.name], int8))})[0]
            unclamped_errors.append(np.abs(unclamped - expected).max())
    # The same bytes spent on the range the ReLU6 keeps: the answer is closer to the unsplit one.
    assert np.mean(errors) < np.mean(unclamped_errors)
