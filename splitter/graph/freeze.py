"""Freezing an ONNX file: its inputs fixed to the profiled shapes, then constant-folded by
onnxruntime, so every tensor has a static shape.

Exported models often compute Reshape targets at run time (Shape → Gather → Concat of the input's
dynamic dimensions); ONNX shape inference cannot see through them, and such tensors have no size
to plan with. onnxruntime's basic level folds them once the input shape is fixed (and fuses what
it would fuse anyway, such as Conv+BatchNorm): the frozen graph is what onnxruntime runs. The
frozen model is checked against the original on a random input before anything uses it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from protos.errors import SplitInferError
from splitter.graph.graph import fix_input_shapes, model_inputs


def _session(
    model: onnx.ModelProto, level: ort.GraphOptimizationLevel, saved_to: str | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if saved_to:
        options.optimized_model_filepath = saved_to
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _restore_order(folded: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Puts the folded nodes back in the original file's order where the graph allows: onnxruntime
    reorders them, and cut names and positions should follow the model as its author wrote it.
    A topological sort that always takes the ready node that came first in the original."""
    import heapq

    position = {node.name: index for index, node in enumerate(original.graph.node) if node.name}
    nodes = list(folded.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting = [0] * len(nodes)
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            if name in producer:
                waiting[i] += 1
                consumers.setdefault(producer[name], []).append(i)
    rank = lambda i: (position.get(nodes[i].name, len(position)), i)  # noqa: E731
    ready = [rank(i) for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in consumers.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, rank(j))
    del folded.graph.node[:]
    folded.graph.node.extend(order)


def freeze(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], *, tolerance: float = 1e-4) -> onnx.ModelProto:
    try:
        return _freeze(model, shapes, tolerance)
    except SplitInferError:
        raise
    except Exception as err:  # onnx and onnxruntime each raise their own kinds for a shape that does not fit
        shown = ", ".join(f"{name} {','.join(map(str, shape))}" for name, shape in shapes.items())
        raise SplitInferError(f"the model cannot run with input shape {shown}: {type(err).__name__}: {err}") from err


def _freeze(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], tolerance: float) -> onnx.ModelProto:
    fixed = fix_input_shapes(model, shapes)
    handle, path = tempfile.mkstemp(suffix=".onnx")
    os.close(handle)
    try:
        _session(fixed, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, saved_to=path)
        folded = onnx.load(path)
    finally:
        os.remove(path)
    # onnxruntime declares every domain it knows; keep the ones the graph uses.
    used = {node.domain for node in folded.graph.node} | {""}
    kept = [o for o in folded.opset_import if o.domain in used]
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    _restore_order(folded, model)
    frozen = fix_input_shapes(folded, shapes)

    rng = np.random.default_rng(0)
    feed = {
        v.name: rng.standard_normal(shapes[v.name]).astype(
            helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        )
        for v in model_inputs(fixed)
    }
    reference = _session(fixed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feed)
    for want, got in zip(reference, _session(frozen, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feed)):
        error = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1.0)
        if not error <= tolerance:
            raise SplitInferError(f"constant folding changed the model's output by {error:.3g} (relative)")
    return frozen


def has_static_shapes(model: onnx.ModelProto) -> bool:
    """Whether ONNX shape inference gives every tensor of `model` a fully known shape."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.output]
    return len(inferred.graph.value_info) > 0 and all(
        v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
        for v in values
    )
