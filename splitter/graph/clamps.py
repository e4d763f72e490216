"""The range every reader of a tensor clamps it to: what a sender may clamp it to before encoding.

A pre-activation tensor (a convolution's output that only a ReLU6 reads) holds values the model
throws away: the tail's first op clips them. Quantised over its whole range, most of the 256 int8
levels go to values that change nothing, and the ones that matter are coarse; clamped first, the
same bytes carry a finer grid and compress better, and the tail computes exactly what it would
have from the unclamped tensor. On the trained EfficientNet-Lite0, int8+zstd at `_conv_stem/Conv`
keeps top-1 on 104 of 128 inputs unclamped and 128 of 128 clamped (bench/codecs.py).

A tensor gets a range only when every op that reads it is a clamp with constant bounds (Relu,
Clip with constant min/max) and it is not a model output; the range is the widest of its
readers'. A model with subgraphs (If, Loop, Scan) gets none: their bodies may read a tensor by
name without listing it as an input.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from protos.codec import Clamp

# Reading ops whose output depends on their input only through a clamp to a constant range.
_CLAMPS = frozenset({"Relu", "Clip"})


def reader_clamps(model: onnx.ModelProto) -> dict[str, Clamp]:
    """Tensor name → (low, high) (None: unbounded on that side) for every float tensor whose
    readers all clamp it to within that range."""
    nodes = list(model.graph.node)
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for attr in n.attribute):
        return {}
    constants = _constants(model)
    # Tensors read as a clamp's data input, by those clamps; and tensors read in any other way
    # (a bound, another op's operand), which have no range.
    clamped_by: dict[str, list[onnx.NodeProto]] = {}
    read_otherwise: set[str] = {v.name for v in model.graph.output}
    for node in nodes:
        for position, name in enumerate(node.input):
            if position == 0 and node.op_type in _CLAMPS and node.domain in ("", "ai.onnx"):
                clamped_by.setdefault(name, []).append(node)
            else:
                read_otherwise.add(name)
    clamps: dict[str, Clamp] = {}
    for name, readers in clamped_by.items():
        if name in read_otherwise or name in constants:
            continue
        ranges = [_range(node, constants) for node in readers]
        if any(r is None for r in ranges):
            continue
        low = None if any(r[0] is None for r in ranges) else min(r[0] for r in ranges)
        high = None if any(r[1] is None for r in ranges) else max(r[1] for r in ranges)
        if low is not None or high is not None:
            clamps[name] = (low, high)
    return clamps


def _range(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> Clamp | None:
    """The range a Relu or Clip node clamps its input to; None when a bound is not a constant."""
    if node.op_type == "Relu":
        return (0.0, None)
    attributes = {a.name: a.f for a in node.attribute if a.type == onnx.AttributeProto.FLOAT}
    bounds: list[float | None] = []
    for position, attribute in ((1, "min"), (2, "max")):
        if len(node.input) > position and node.input[position]:
            value = constants.get(node.input[position])
            if value is None or value.size != 1:
                return None  # a bound computed at run time: no range known here
            bounds.append(float(value.reshape(())))
        else:
            # Opset < 11 gives the bounds as attributes; an absent bound is unbounded.
            bounds.append(attributes.get(attribute))
    low, high = (b if b is not None and math.isfinite(b) else None for b in bounds)
    return (low, high)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' outputs by name."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values
