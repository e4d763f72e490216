"""The DeviceProfile: what one device (one onnxruntime configuration: its thread count, its NCHWc
block size) takes to run each kind of kernel, fitted by `splitinfer calibrate` on that device
(edge_runtime.calibration), and the power model that prices its energy. With it, a model's per-cut
head and tail latencies are predicted from the Graph alone, for a device we cannot run on:

    session ms = fixed cost per run + cost per kernel × kernels
               + Σ over the kernels onnxruntime runs for the session's ops (splitter.op_features)
                 of coefficients(kind) · features
               + Σ over the kinds of kernel present of the kind's cold start

A head is one session (its ops, returning the cut tensors), a tail another; fusions and layout
reorders are worked out for each, as onnxruntime does when it loads them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.errors import SplitInferError
from splitter.cuts import Cut, device_ops
from splitter.graph import Graph, Op
from splitter.op_features import FEATURES, Kernel, kernels
from splitter.power import PowerModel

FORMAT_VERSION = 1
KIND = "splitinfer-device-profile"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    threads: int
    nchwc_block: int
    overhead_ms: float
    per_kernel_ms: float
    # Kernel kind → coefficients over FEATURES (ms per unit).
    coefficients: dict[str, tuple[float, ...]]
    # Kernel kind → what the first kernel of that kind costs a run on top (cold code after an idle gap).
    cold_ms: dict[str, float]
    power: PowerModel
    engine: dict[str, object]
    machine: dict[str, str]
    suite: str
    fit: dict[str, dict]
    measurements: dict[str, dict[str, float]]

    @classmethod
    def from_dict(cls, data: dict) -> DeviceProfile:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise SplitInferError("not a device profile (written by `splitinfer calibrate`)")
        if data.get("format_version") != FORMAT_VERSION:
            raise SplitInferError(f"device profile format_version {data.get('format_version')} is not {FORMAT_VERSION}")
        try:
            if list(data["features"]) != list(FEATURES):
                raise SplitInferError(f"device profile features {data['features']} are not {list(FEATURES)}; calibrate again")
            return cls(
                name=str(data["name"]),
                threads=int(data["engine"]["threads"]),
                nchwc_block=int(data["nchwc_block"]),
                overhead_ms=float(data["overhead_ms"]),
                per_kernel_ms=float(data.get("per_kernel_ms", 0.0)),
                coefficients={k: tuple(float(x) for x in v) for k, v in data["coefficients"].items()},
                cold_ms={k: float(v) for k, v in data.get("cold_ms", {}).items()},
                power=PowerModel.from_dict(data["power"]),
                engine=dict(data["engine"]),
                machine=dict(data["machine"]),
                suite=str(data["suite"]),
                fit=dict(data.get("fit", {})),
                measurements=dict(data.get("measurements", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SplitInferError(f"malformed device profile: {type(err).__name__}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SplitInferError(f"device profile {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SplitInferError(f"device profile {str(path)!r} cannot be read: {err}") from err
        try:
            return cls.from_dict(data)
        except SplitInferError as err:
            raise SplitInferError(f"device profile {str(path)!r}: {err}") from err

    def with_power(self, power: PowerModel) -> DeviceProfile:
        return dataclasses.replace(self, power=power)

    def kernel_ms(self, kernel: Kernel) -> float:
        coefficients = self.coefficients.get(kernel.op_class) or self.coefficients.get("other")
        if coefficients is None:
            raise SplitInferError(f"device profile {self.name!r} has no model for {kernel.op_class!r} kernels and no fallback")
        return max(0.0, float(np.dot(coefficients, kernel.features)))

    def session_ms(self, graph: Graph, ops: Sequence[Op], outputs: Sequence[str]) -> float:
        """Predicted time of one run of a session holding `ops` and returning `outputs`."""
        found = kernels(graph, ops, outputs, self.nchwc_block)
        cold = sum(self.cold_ms.get(kind, 0.0) for kind in {k.op_class for k in found})
        return self.overhead_ms + cold + self.per_kernel_ms * len(found) + sum(self.kernel_ms(k) for k in found)

    def op_ms(self, graph: Graph) -> dict[str, float]:
        """Every op's share of a run of the whole model (fused ops 0; reorders to the op they serve)."""
        shares = {op.name: 0.0 for op in graph.ops}
        seen: set[str] = set()
        for kernel in kernels(graph, graph.ops, graph.outputs, self.nchwc_block):
            cold = self.cold_ms.get(kernel.op_class, 0.0) if kernel.op_class not in seen else 0.0
            seen.add(kernel.op_class)
            shares[kernel.op] += cold + self.per_kernel_ms + self.kernel_ms(kernel)
        return shares

    def uncovered(self, graph: Graph) -> set[str]:
        """Op types of the graph that only the fallback model prices."""
        found = kernels(graph, graph.ops, graph.outputs, self.nchwc_block)
        return {k.op_class for k in found if k.op_class not in self.coefficients}


def predict_cut_ms(edge: DeviceProfile, server: DeviceProfile, graph: Graph, cut: Cut) -> tuple[float, float]:
    """(head ms on `edge`, tail ms on `server`) of one cut; 0 for a side with no ops."""
    head = device_ops(graph, cut)
    names = {op.name for op in head}
    tail = [op for op in graph.ops if op.name not in names]
    head_ms = edge.session_ms(graph, head, cut.tensors) if head else 0.0
    tail_ms = server.session_ms(graph, tail, graph.outputs) if tail else 0.0
    return head_ms, tail_ms
