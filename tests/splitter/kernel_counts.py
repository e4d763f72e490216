"""The kernels onnxruntime's own profiler reports running for a model, counted against the ones
splitter.profile.predict.features predicts (the op-feature and calibration-suite tests share them)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from splitter.graph.graph import Graph
from splitter.profile.predict.features import kernels

# Kernels op_features prices apart but onnxruntime runs inside the Conv they were fused into.
FUSED_PARTS = {"conv_activation", "conv_sum"}


def ort_kernels(model: onnx.ModelProto) -> list[str]:
    """The op types of the kernels one run of `model` executes, in order, by onnxruntime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "k")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {i.name: np.ones(i.shape, np.float32) for i in session.get_inputs()}
        session.run(None, feed)
        with open(session.end_profiling()) as file:
            events = json.load(file)
    return [e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def predicted_counts(graph: Graph, ops: list, outputs: tuple[str, ...], block: int) -> Counter:
    counts: Counter = Counter()
    for k in kernels(graph, ops, outputs, block):
        if k.op_class not in FUSED_PARTS:
            # onnxruntime runs a HardSwish as a HardSigmoid and a Mul; priced as one kind here.
            counts["reorder" if k.op_class == "reorder" else "compute"] += 2 if k.op_class == "HardSwish" else 1
    return counts


def actual_counts(model: onnx.ModelProto) -> Counter:
    return Counter("reorder" if name.startswith("Reorder") else "compute" for name in ort_kernels(model))
