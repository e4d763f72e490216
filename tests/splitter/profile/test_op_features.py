"""What onnxruntime runs for a set of ops (splitter.profile.predict.features): fusions into Convs, which ones a
cut undoes, and NCHWc layout reorders, on hand-made graphs; each checked against the kernels
onnxruntime's own profiler reports running for the same graph on this machine."""

from __future__ import annotations

import onnx
import pytest
from kernel_counts import actual_counts, predicted_counts

from edge_runtime.calibration import probe_block_size
from protos.device_profile import FEATURES
from splitter.graph.graph import graph_from_onnx
from splitter.profile.predict.features import kernels
from splitter.profile.predict.suite import Builder


@pytest.fixture(scope="module")
def block() -> int:
    return probe_block_size(1)


def conv_bn_relu_residual() -> onnx.ModelProto:
    """conv → BN → ReLU → conv → (+ input) → ReLU: a ResNet basic block."""
    b = Builder()
    x = b.input((1, 16, 28, 28))
    y = b.op(
        "Relu",
        [b.op("BatchNormalization", [b.conv(x, 16, 16, 3), *[b.constant((16,), v) for v in (1.0, 0.0, 0.0, 1.0)]])],
    )
    return b.model(b.op("Relu", [b.op("Add", [b.conv(y, 16, 16, 3), x])]))


def test_batchnorm_folds_and_activation_fuses_into_a_conv_but_a_plain_residual_sum_does_not() -> None:
    graph = graph_from_onnx(conv_bn_relu_residual())
    first_conv, second_conv = (op.name for op in graph.ops if op.op_type == "Conv")
    add, relu = graph.ops[-2:]
    assert [(k.op, k.op_class) for k in kernels(graph, graph.ops, graph.outputs, 0)] == [
        (first_conv, "conv"), (first_conv, "conv_activation"), (second_conv, "conv"), (add.name, "Add"), (relu.name, "Relu"),
    ]  # fmt: skip


def test_a_residual_sum_of_blocked_tensors_fuses_into_the_blocked_conv_with_its_activation() -> None:
    b = Builder()
    y = b.op("Relu", [b.conv(b.input((1, 16, 28, 28)), 16, 16, 3)])
    graph = graph_from_onnx(b.model(b.op("Relu", [b.op("Add", [b.conv(y, 16, 16, 3), y])])))
    found = kernels(graph, graph.ops, graph.outputs, 8)
    second_conv = graph.ops[2].name
    assert [(k.op, k.op_class) for k in found][3:] == [
        (second_conv, "conv_nchwc"), (second_conv, "conv_sum"), (second_conv, "conv_activation"), (second_conv, "reorder"),
    ]  # fmt: skip
    # The fused sum reads the residual (16×28×28 floats); the activation passes over the output.
    sum_kernel = next(k for k in found if k.op_class == "conv_sum")
    assert sum_kernel.features[FEATURES.index("in_bytes")] == 16 * 28 * 28 * 4
    # Blocked, the input reorder comes first: the first conv reads 16 channels, more than a block.
    assert found[0].op_class == "reorder"


def test_a_cut_that_returns_a_conv_output_undoes_the_fusion_after_it() -> None:
    graph = graph_from_onnx(conv_bn_relu_residual())
    conv, bn, relu = graph.ops[:3]
    assert [k.op_class for k in kernels(graph, [conv, bn], bn.outputs, 0)] == ["conv"]  # BN folds all the same
    assert [k.op_class for k in kernels(graph, [conv, bn, relu], relu.outputs, 0)] == ["conv", "conv_activation"]
    assert [k.op_class for k in kernels(graph, [conv, bn, relu], bn.outputs + relu.outputs, 0)] == ["conv", "Relu"]


def test_a_conv_output_read_twice_is_not_fused() -> None:
    b = Builder()
    y = b.conv(b.input((1, 8, 14, 14)), 8, 8, 1)
    out = b.op("Add", [b.op("Relu", [y]), b.op("Sigmoid", [y])])
    graph = graph_from_onnx(b.model(out))
    assert [k.op_class for k in kernels(graph, graph.ops, graph.outputs, 0)] == ["conv_pw", "Relu", "Sigmoid", "Add"]


def test_without_a_blocked_layout_there_are_no_reorders() -> None:
    graph = graph_from_onnx(conv_bn_relu_residual())
    assert predicted_counts(graph, graph.ops, graph.outputs, 0)["reorder"] == 0
    assert {k.op_class for k in kernels(graph, graph.ops, graph.outputs, 8)} >= {"conv_nchwc", "reorder"}


def models_to_cross_check() -> dict[str, onnx.ModelProto]:
    models = {"resnet block": conv_bn_relu_residual()}
    b = Builder()  # a stem reads the plain input itself: no reorder in, one out
    models["stem"] = b.model(b.op("Relu", [b.conv(b.input((1, 3, 32, 32)), 3, 16, 3, 2)]))
    b = Builder()  # an inverted residual block, with a pool and a dense layer after it
    x = b.input((1, 16, 28, 28))
    y = b.op("Clip", [b.conv(x, 16, 96, 1), b.constant(()), b.constant((), 6.0)])
    y = b.op("Clip", [b.conv(y, 96, 96, 3, 1, group=96), b.constant(()), b.constant((), 6.0)])
    y = b.op("Add", [b.conv(y, 96, 16, 1), x])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    models["inverted residual"] = b.model(b.op("Gemm", [y, b.constant((10, 16)), b.constant((10,))], transB=1))
    b = Builder()  # a grouped (not depthwise) conv stays in the plain layout
    models["grouped"] = b.model(b.conv(b.conv(b.input((1, 32, 14, 14)), 32, 32, 3, 1, group=4), 32, 32, 1))
    b = Builder()  # a blocked tensor read by a blocked Conv and by a plain op: one reorder out for it
    y = b.conv(b.input((1, 16, 14, 14)), 16, 16, 3)
    models["two readers"] = b.model(b.op("Concat", [b.op("Softmax", [y], axis=1), b.conv(y, 16, 16, 1)], axis=1))
    b = Builder()  # residual sums fuse into blocked Convs only with a blocked tensor, not the plain input
    x = b.input((1, 16, 14, 14))
    y = b.op("Relu", [b.op("Add", [b.conv(x, 16, 16, 3), x])])
    models["residual sums"] = b.model(b.op("Add", [b.conv(y, 16, 16, 1), y]))
    b = Builder()  # channel counts the blocked layout does not take: 42 in, a grouped conv with 4 per group
    y = b.conv(b.conv(b.input((1, 42, 14, 14)), 42, 32, 1), 32, 32, 3, 1, group=8)
    models["unaligned channels"] = b.model(b.op("GlobalAveragePool", [b.conv(y, 32, 20, 3, 1, group=4)]))
    b = Builder()  # pools after a plain op: a max pool is reordered in, a global pool is not
    y = b.op("Add", [b.input((1, 16, 28, 28)), b.input((1, 16, 28, 28))])
    models["pools"] = b.model(
        b.op("Add", [b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[28, 28]), b.op("GlobalAveragePool", [y])])
    )
    return models


@pytest.mark.parametrize("name", list(models_to_cross_check()))
def test_kernel_and_reorder_counts_match_onnxruntime(name: str, block: int) -> None:
    model = models_to_cross_check()[name]
    graph = graph_from_onnx(model)
    assert predicted_counts(graph, graph.ops, graph.outputs, block) == actual_counts(model)


def test_a_head_cut_inside_a_blocked_region_pays_a_reorder_out(block: int) -> None:
    if block == 0:
        pytest.skip("onnxruntime uses no blocked layout on this machine")
    model = models_to_cross_check()["inverted residual"]
    graph = graph_from_onnx(model)
    depthwise = next(op for op in graph.ops if op.op_type == "Conv" and op.attributes.get("group", 1) > 1)
    head = graph.ops[: graph.ops.index(depthwise) + 1]
    cut = depthwise.outputs
    head_model = onnx.utils.Extractor(model).extract_model(list(graph.inputs), list(cut))
    predicted = predicted_counts(graph, head, cut, block)
    assert predicted["reorder"] == 2  # in, and out to return the cut tensor
    assert predicted == actual_counts(head_model)


def test_every_cut_of_a_network_runs_the_kernels_predicted(mobilenet_source, block: int) -> None:
    """Heads and tails of MobileNetV2 (0.35, 96×96) at every cut: fusions lost at the cut, reorders
    to return or take the cut tensor, as onnxruntime runs them."""
    from splitter.graph.cuts import device_ops
    from splitter.pipeline import model_cuts

    model = mobilenet_source.model
    graph = graph_from_onnx(model)
    extractor = onnx.utils.Extractor(model)
    for cut in model_cuts(mobilenet_source)[::5]:
        head = device_ops(graph, cut)
        tail = [op for op in graph.ops if op not in head]
        if head:
            assert predicted_counts(graph, head, cut.tensors, block) == actual_counts(
                extractor.extract_model(list(graph.inputs), list(cut.tensors))
            ), cut.name
        if tail:
            assert predicted_counts(graph, tail, graph.outputs, block) == actual_counts(
                extractor.extract_model(list(cut.tensors), list(graph.outputs))
            ), cut.name
