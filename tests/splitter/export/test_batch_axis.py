"""Tails with a batch axis: relaxed and proven by running a batch against single runs; a tail that
cannot batch is kept as exported; export records which it is, and old manifests load as not
batchable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bundles import build_bundle
from onnx import TensorProto, helper, numpy_helper

from protos.bundle import MANIFEST, load_bundle
from protos.errors import BundleError
from splitter.export.batch_axis import BATCH_DIM, batchable_tail, check_batching, relax_batch_dim
from splitter.export.bundle import export_bundle
from splitter.graph.cuts import find_cut
from splitter.pipeline import model_cuts
from splitter.sources import ModelSource


def _model(nodes: list, output_shape: list, initializers: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _input_dims(model: onnx.ModelProto) -> list:
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_a_tail_that_batches_gets_a_symbolic_batch_axis(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "tiny")
    tail = onnx.load(bundle.tail_path)
    relaxed, batchable = batchable_tail(tail)
    assert batchable
    assert _input_dims(relaxed) == [BATCH_DIM, 4, 8, 8]
    assert relaxed.graph.output[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    assert _input_dims(tail) == [1, 4, 8, 8]  # the original is left alone
    session = ort.InferenceSession(relaxed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"act": np.zeros((5, 4, 8, 8), np.float32)})[0].shape == (5, 4)
    check = check_batching(relaxed)
    assert check.batchable and check.max_abs_diff <= 1e-5


def test_a_reshape_with_the_batch_folded_in_is_not_batchable() -> None:
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    tail = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [1, 16], (shape,))
    check = check_batching(relax_batch_dim(tail))
    assert not check.batchable
    assert "output 'y' of a batch of 3 has shape [1, 48], not [3, 16]" in check.reason
    kept, batchable = batchable_tail(tail)
    assert not batchable and kept is tail


def test_an_op_that_mixes_samples_is_not_batchable() -> None:
    # Subtracting the mean over axis 0: fine for one sample (zero), wrong across a batch.
    tail = _model(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "m"], ["y"]),
        ],
        [1, 4, 2, 2],
    )
    check = check_batching(relax_batch_dim(tail))
    assert not check.batchable and "a batch of 3 differs from single runs by" in check.reason


def test_an_output_without_a_batch_axis_is_not_batchable() -> None:
    tail = _model([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], [])
    with pytest.raises(ValueError, match="tensor 'y' has no axis 0 to batch along"):
        relax_batch_dim(tail)
    assert batchable_tail(tail) == (tail, False)
    assert batchable_tail(None) == (None, False)


def test_export_records_a_batchable_tail_and_old_manifests_load_as_not_batchable(
    tmp_path: Path, mobilenet_source: ModelSource, mobilenet_samples: list
) -> None:
    cut = find_cut(model_cuts(mobilenet_source), "features.7")
    bundle, _ = export_bundle(
        mobilenet_source, cut, tmp_path / "b", mobilenet_samples[:1], codec="int8+zstd", min_agreement=0
    )
    assert bundle.manifest.batchable
    assert _input_dims(onnx.load(bundle.tail_path))[0] == BATCH_DIM
    data = json.loads((bundle.path / MANIFEST).read_text())
    assert data["batchable"] is True
    # A manifest written before batchability was recorded (format 1, whose hash did not cover it).
    old = dataclasses.replace(bundle.manifest, format_version=1, batchable=False)
    del data["batchable"]
    data.update(format_version=1, bundle_hash=old.bundle_hash)
    (bundle.path / MANIFEST).write_text(json.dumps(data))
    assert load_bundle(bundle.path).manifest.batchable is False
    # In the current format the field is covered: deleting it is an edit the hash refuses.
    data = {**bundle.manifest.to_dict()}
    del data["batchable"]
    (bundle.path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="edited after export"):
        load_bundle(bundle.path)
