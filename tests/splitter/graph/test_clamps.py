"""The range every reader of a tensor clamps it to (splitter.graph.clamps), read from ONNX graphs
written by hand with onnx.helper: each way a reader can give a range, and each way it cannot."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitter.graph.clamps import reader_clamps


def _model(nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray] | None = None, opset: int = 17):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _bounds(low: float, high: float) -> dict[str, np.ndarray]:
    return {"lo": np.float32(low), "hi": np.float32(high)}


def test_relu6_as_clip_with_constant_bounds_and_relu() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    assert reader_clamps(_model(nodes, _bounds(0, 6))) == {"a": (0.0, 6.0), "c": (0.0, None)}


def test_bounds_from_constant_nodes_attributes_and_one_sided_clips() -> None:
    nodes = [
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(-1), "lo")),
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a", "lo"], ["b"]),  # no max: unbounded above
        helper.make_node("Neg", ["b"], ["y"]),
    ]
    assert reader_clamps(_model(nodes)) == {"a": (-1.0, None)}
    old = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a"], ["y"], min=0.0, max=6.0),
    ]
    assert reader_clamps(_model(old, opset=10)) == {"a": (0.0, 6.0)}


def test_several_clamping_readers_give_the_widest_range() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
        helper.make_node("Relu", ["a"], ["c"]),
        helper.make_node("Add", ["b", "c"], ["y"]),
    ]
    assert reader_clamps(_model(nodes, _bounds(1, 6))) == {"a": (0.0, None)}


def test_no_range_where_any_reader_does_more_than_clamp() -> None:
    read_by_add = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    assert reader_clamps(_model(read_by_add, _bounds(0, 6))) == {}
    # A bound computed at run time (from the input) is not known here.
    runtime_bound = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Clip", ["a", "lo", "m"], ["y"]),
    ]
    assert "a" not in reader_clamps(_model(runtime_bound, {"lo": np.float32(0)}))
    # The model's output is read by the user, whatever else reads it.
    output_too = [
        helper.make_node("Neg", ["x"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    assert "y" not in reader_clamps(_model(output_too))
    # A Clip without bounds clamps nothing.
    unbounded = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Clip", ["a"], ["y"])]
    assert reader_clamps(_model(unbounded)) == {}


def test_a_model_with_subgraphs_gets_no_ranges() -> None:
    branch = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["o"])],
        "branch",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 4])],
    )
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("ReduceMax", ["r"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["cond"], to=TensorProto.BOOL),
        # Its branch reads `a` by name from the outer scope, without listing it as an input.
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    assert reader_clamps(_model(nodes)) == {}
