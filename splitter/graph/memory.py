"""Device memory a head needs: the bytes of the weights it reads plus its peak of live activations.

Weights are the initializers the head's ops read (a weight shared by two ops counts once).
Activations are simulated in the graph's order, as onnxruntime's sequential executor runs them: a
tensor is live from the op that makes it (the model input from the start) until its last use on
the device; a tensor that crosses the cut stays live until it is sent. The peak is taken while an
op runs, with its inputs and outputs both live. onnxruntime's arena and fused kernels shift the
real figure by a few percent; this is the planner's estimate, not a measurement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from splitter.graph.graph import Graph, Op


@dataclass(frozen=True)
class HeadMemory:
    weight_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


def weight_bytes(graph: Graph, ops: Iterable[Op]) -> int:
    used = {name for op in ops for name in op.weights}
    return sum(graph.weight_nbytes.get(name, 0) for name in used)


def peak_activation_bytes(graph: Graph, ops: Sequence[Op], sent: Iterable[str]) -> int:
    """Peak bytes of live activations while `ops` (in graph order) run on the device."""
    keep = set(sent)
    last_use: dict[str, int] = {}
    for position, op in enumerate(ops):
        for name in op.inputs:
            last_use[name] = position

    def size(name: str) -> int:
        known = name in graph.tensors and -1 not in graph.tensors[name].shape
        return graph.tensors[name].nbytes if known else 0

    live = {name: size(name) for name in graph.inputs if name in last_use or name in keep}
    peak = sum(live.values())
    for position, op in enumerate(ops):
        for name in op.outputs:
            live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in op.inputs:
            if last_use.get(name) == position and name not in keep:
                live.pop(name, None)
        for name in op.outputs:
            if name not in last_use and name not in keep:
                live.pop(name, None)  # made and never used on the device: freed at once
    return peak


def head_memory(graph: Graph, ops: Sequence[Op], sent: Iterable[str]) -> HeadMemory:
    return HeadMemory(weight_bytes(graph, ops), peak_activation_bytes(graph, ops, sent) if ops else 0)
