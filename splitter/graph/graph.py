"""The Graph: the ops and tensors of one model, as plain data.

The graph is read from ONNX, the format both halves run in: a torch model is first exported with
the TorchScript-based exporter (its node names keep the module path, e.g.
`/features/features.3/conv/conv.0/conv.0.0/Conv`), an .onnx file is read as it is. Shapes come
from ONNX shape inference with the model's inputs fixed to the profiled shape, so every tensor
knows its size in bytes.

Tensors that depend only on weights and constants are *static*: they never cross a cut, because
each half recomputes them (ONNX extraction copies them into whichever half needs them). Each op
still records its full positional inputs, its attributes and the initializers it uses (directly or
through static ops), so later passes can price it (FLOPs, weight bytes) from the Graph alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

from protos.codec import Clamp
from protos.errors import SplitInferError
from splitter.graph.clamps import reader_clamps


@dataclass(frozen=True)
class Op:
    name: str
    op_type: str
    # Activations only: the tensors that can cross a cut.
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # The node's inputs as ONNX lists them, weights and constants included ("" for an omitted one).
    node_inputs: tuple[str, ...] = ()
    # Plain attributes (ints, floats, strings and lists of them); tensor- and graph-valued ones are left out.
    attributes: Mapping[str, object] = field(default_factory=dict)
    # Initializers this op reads, directly or through static ops (a weight computed from two).
    weights: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Graph:
    """Ops in topological order (static ops left out), with tensor facts for every activation."""

    ops: tuple[Op, ...]
    tensors: dict[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Shapes of weights and other static tensors, where known.
    static_tensors: dict[str, TensorInfo] = field(default_factory=dict)
    # Bytes of every initializer.
    weight_nbytes: dict[str, int] = field(default_factory=dict)
    # The range every reader of a tensor clamps it to, where there is one (splitter.graph.clamps).
    clamps: dict[str, Clamp] = field(default_factory=dict)


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of the model whose inputs have the given static shapes (batch 1 and so on), with the
    shape of every tensor inferred into value_info (ONNX extraction needs them)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers:
            continue
        if value.name not in shapes:
            raise SplitInferError(f"no shape given for model input {value.name!r}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise SplitInferError(f"input {value.name!r} has rank {len(dims)}, given shape {list(shapes[value.name])}")
        for dim, size in zip(dims, shapes[value.name]):
            dim.Clear()
            dim.dim_value = int(size)
    return shape_inference.infer_shapes(fixed, check_type=True, strict_mode=True)


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def default_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Each input's declared shape with symbolic dimensions read as 1 for the batch axis.

    Raises if any other dimension is symbolic: the caller must then say the shape."""
    shapes = {}
    for value in model_inputs(model):
        dims = []
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(1)
            else:
                raise SplitInferError(
                    f"input {value.name!r} has a symbolic dimension {dim.dim_param or '?'} at axis {axis}; "
                    "give the input shape explicitly (--input-shape)"
                )
        shapes[value.name] = tuple(dims)
    return shapes


def _static_tensors(model: onnx.ModelProto) -> set[str]:
    static = {init.name for init in model.graph.initializer}
    static.add("")  # ONNX marks an omitted optional input by the empty name
    for node in model.graph.node:
        if all(name in static for name in node.input):
            static.update(node.output)
    return static


def _plain_attributes(node: onnx.NodeProto) -> dict[str, object]:
    plain: dict[str, object] = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            plain[attribute.name] = value.decode("utf-8", "replace")
        elif isinstance(value, (int, float, str)):
            plain[attribute.name] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            plain[attribute.name] = tuple(value)
    return plain


def _weight_sources(model: onnx.ModelProto, static: set[str]) -> dict[str, frozenset[str]]:
    """For every static tensor, the initializers it is computed from."""
    sources: dict[str, frozenset[str]] = {init.name: frozenset({init.name}) for init in model.graph.initializer}
    for node in model.graph.node:
        if all(name in static for name in node.input):
            used = frozenset().union(*(sources.get(name, frozenset()) for name in node.input))
            for name in node.output:
                sources[name] = used
    return sources


def graph_from_onnx(model: onnx.ModelProto) -> Graph:
    """Reads a model whose inputs have static shapes (see fix_input_shapes) into a Graph."""
    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    tensors: dict[str, TensorInfo] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        tensors[value.name] = TensorInfo(value.name, dtype, shape)
    static = _static_tensors(model)
    sources = _weight_sources(model, static)
    ops = []
    for index, node in enumerate(model.graph.node):
        if all(name in static for name in node.input):
            continue
        name = node.name or f"{node.op_type}_{index}"
        weights = sorted(frozenset().union(*(sources.get(i, frozenset()) for i in node.input)))
        ops.append(
            Op(
                name,
                node.op_type,
                tuple(i for i in node.input if i not in static),
                tuple(node.output),
                node_inputs=tuple(node.input),
                attributes=_plain_attributes(node),
                weights=tuple(weights),
            )
        )
    inputs = tuple(v.name for v in model_inputs(model))
    outputs = tuple(v.name for v in model.graph.output)
    for name in (*inputs, *outputs):
        if name not in tensors or -1 in tensors[name].shape:
            raise SplitInferError(f"tensor {name!r} has no static shape after shape inference")
    static_tensors = {
        init.name: TensorInfo(init.name, helper.tensor_dtype_to_np_dtype(init.data_type).name, tuple(init.dims))
        for init in model.graph.initializer
    }
    static_tensors.update({n: info for n, info in tensors.items() if n in static and n not in static_tensors})
    weight_nbytes = {init.name: static_tensors[init.name].nbytes for init in model.graph.initializer}
    return Graph(tuple(ops), tensors, inputs, outputs, static_tensors, weight_nbytes, reader_clamps(model))


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise SplitInferError(f"model file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path))
        # Protobuf parses many byte strings (an empty file among them) as an empty model.
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ... for a file that is not ONNX
        raise SplitInferError(f"{str(path)!r} is not a valid ONNX model: {err}") from err
    if not model.graph.node or not model_inputs(model) or not model.graph.output:
        raise SplitInferError(f"{str(path)!r} has an empty graph (no nodes, inputs or outputs)")
    return model
