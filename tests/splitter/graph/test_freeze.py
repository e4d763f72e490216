"""Freezing an ONNX file whose reshape targets are computed at run time from its input's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.errors import SplitInferError
from splitter.graph.graph import graph_from_onnx
from splitter.pipeline import model_cuts
from splitter.sources import load_source


def _dynamic_reshape_model() -> onnx.ModelProto:
    """x[N,4,H,W] → Conv → Relu → Reshape to [N, -1] via Shape/Gather/Concat → Gemm: the Reshape's
    target depends on the input's dynamic shape, so plain shape inference leaves it unknown."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((8 * 6 * 6, 5)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_model_with_run_time_reshape_targets_is_frozen_and_cut(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    onnx.save(_dynamic_reshape_model(), str(path))
    source = load_source(str(path), input_shape=(1, 4, 6, 6))
    graph = graph_from_onnx(source.model)
    assert graph.tensors["flat"].shape == (1, 288)
    assert {op.op_type for op in graph.ops} >= {"Conv", "Relu", "Reshape", "MatMul"}
    assert "Shape" not in {op.op_type for op in graph.ops}  # folded away
    assert [c.name for c in model_cuts(source)] == ["conv", "relu", "reshape", "output"]
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(source.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_shape_that_does_not_fit_the_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    onnx.save(_dynamic_reshape_model(), str(path))
    with pytest.raises(SplitInferError):
        load_source(str(path), input_shape=(1, 4, 7, 7))  # the MatMul expects 6×6 maps
