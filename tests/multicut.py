"""A multi-cut test bundle built without torch: a small ONNX model written with `onnx.helper`,
exported by splitter.export.bundle.export_multi_cut with a hand-made decision table.

The model is x[1,8,32,32] → Relu (`a`) → Conv 1×1 (`b`) → Relu (`c`) → GlobalAveragePool
(`pooled`) → Flatten → logits[1,8]. Cut `a` sends 32 KiB in fp32, `pooled` 32 bytes. The table
makes `a` (1 ms on the device) the best on a fast uplink and `pooled` (50 ms on the device) on a
slow one (`a` goes best in fp16 there): the two cost the same at about 2.7 Mbit/s (`SWITCH_BPS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from protos.decisions import DecisionTable

INPUT_SHAPE = (1, 8, 32, 32)
CUT_A_BYTES = 8 * 32 * 32 * 4
# Where the table's predicted latencies of `a` (fp16) and `pooled` cross, RTT aside: both pay it.
SWITCH_BPS = CUT_A_BYTES / 2 * 8e3 / (50.0 - 1.5)


def multi_model() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    weights = {
        "w": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.5,
        "bias": rng.standard_normal(8).astype(np.float32) * 0.1,
    }
    nodes = [
        # Each node named as the tensor it makes: the cut after it takes that name.
        helper.make_node("Relu", ["x"], ["a"], name="a"),
        helper.make_node("Conv", ["a", "w", "bias"], ["b"], name="b"),
        helper.make_node("Relu", ["b"], ["c"], name="c"),
        helper.make_node("GlobalAveragePool", ["c"], ["pooled"], name="pooled"),
        helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def multi_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype(np.float32)


def multi_reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(multi_model().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x})[0]


def _entry(cut: str, codec: str, head_ms: float, nbytes: int, *, edge_only: bool = False) -> dict:
    return {
        "cut": cut,
        "codec": codec,
        "head_ms": head_ms,
        "encode_ms": 0.0,
        "nbytes": nbytes,
        "decode_ms": 0.0,
        "tail_ms": 0.0,
        "edge_only": edge_only,
    }


DECISIONS = {
    "version": 1,
    "planning_rtt_ms": 10.0,
    "entries": [
        _entry("input", "fp32", 0.0, 10 * CUT_A_BYTES),
        _entry("a", "fp32", 1.0, CUT_A_BYTES),
        _entry("a", "fp16", 1.5, CUT_A_BYTES // 2),
        _entry("b", "fp32", 40.0, CUT_A_BYTES),
        _entry("c", "fp32", 45.0, CUT_A_BYTES),
        _entry("pooled", "fp32", 50.0, 32),
        _entry("output", "-", 80.0, 0, edge_only=True),
    ],
}


def build_multi_cut(directory: Path):
    """The bundle of every prefix cut of `multi_model` (raw input to all on the device)."""
    from splitter.export.bundle import export_multi_cut
    from splitter.graph.cuts import enumerate_cuts
    from splitter.graph.graph import graph_from_onnx
    from splitter.sources import ModelSource

    model = multi_model()
    source = ModelSource("multi", model, None)
    cuts = enumerate_cuts(graph_from_onnx(model), include_input=True)
    samples = [(f"random-{i}", {"x": multi_input(i)}) for i in range(2)]
    bundle, _ = export_multi_cut(source, cuts, directory, samples, decision_table(DECISIONS))
    return bundle


def decision_table(data: dict) -> DecisionTable:
    """`data` as the DecisionTable export takes (its cuts checked against the bundle by export)."""
    return DecisionTable.from_dict(data, cuts=[entry["cut"] for entry in data["entries"]])
