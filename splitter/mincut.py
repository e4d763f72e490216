"""The min-cut partitioner (DADS: Hu et al., "Dynamic Adaptive DNN Surgery", INFOCOM 2019): the
device/server split of a DAG with the lowest predicted latency, found exactly as a minimum s–t cut.

Nodes are the source s (the device), the sink t (the server), every op, and one node per tensor.
The side an op ends on is the side it runs on, and a cut edge is a cost paid:

    s → op        capacity = op's server time   (cut when the op runs on the server)
    op → t        capacity = op's device time   (cut when the op runs on the device)
    producer → x  capacity = sending x          (encode + bytes/bandwidth + decode; cut when x
    x → consumer  ∞                              crosses; once however many server ops read it)
    consumer → producer   ∞                     (data never flows back from server to device)

A model input is produced by s (it starts on the device); a model output is consumed by t (the
server returns it). So every finite s–t cut is a valid split, priced exactly as splitter.opcost
prices it less the constant every split pays (RTT and the two sessions' overheads), and the
minimum cut is the best split. Capacities are integer nanoseconds, so networkx's max-flow is exact.

Constraints enter as infinite edges: an op pinned to the device gets s → op ∞, one pinned to the
server op → t ∞, a model input that must stay private gets s → x ∞. `device_penalty_ms_per_byte`
adds a price per weight byte on the device side (the Lagrangian of a memory limit).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import networkx as nx

from protos.errors import SplitInferError
from splitter.opcost import OpCosts

_SOURCE, _SINK = ("s",), ("t",)
# networkx's max-flow takes float("inf") for "never cut" (it substitutes a finite bound inside).
_INFINITE = float("inf")


def _ns(ms: float) -> int:
    return max(0, round(ms * 1e6))


@dataclass(frozen=True)
class Partition:
    device: frozenset[str]
    # The cut's capacity in ms: the split's latency less OpCosts.split_constant_ms().
    cut_ms: float


def flow_network(
    costs: OpCosts,
    *,
    input_may_cross: bool = True,
    device_pinned: Collection[str] = (),
    server_pinned: Collection[str] = (),
    device_penalty_ms_per_byte: float = 0.0,
) -> nx.DiGraph:
    graph = costs.graph
    network = nx.DiGraph()
    network.add_node(_SOURCE)
    network.add_node(_SINK)
    # Each weight is charged to the first op that reads it: shared weights are paid once.
    charged: set[str] = set()
    for op in graph.ops:
        node = ("op", op.name)
        network.add_edge(_SOURCE, node, capacity=_ns(costs.server_ms[op.name]))
        penalty = 0.0
        if device_penalty_ms_per_byte:
            new = [w for w in op.weights if w not in charged]
            charged.update(new)
            penalty = device_penalty_ms_per_byte * sum(graph.weight_nbytes.get(w, 0) for w in new)
        network.add_edge(node, _SINK, capacity=_ns(costs.edge_ms[op.name] + penalty))
    for name in device_pinned:
        network.add_edge(_SOURCE, ("op", name), capacity=_INFINITE)
    for name in server_pinned:
        network.add_edge(("op", name), _SINK, capacity=_INFINITE)
    producer = {out: op.name for op in graph.ops for out in op.outputs}
    consumers: dict[str, list[str]] = {}
    for op in graph.ops:
        for name in op.inputs:
            consumers.setdefault(name, []).append(op.name)
    for name in [*graph.inputs, *producer]:
        readers = consumers.get(name, [])
        is_output = name in graph.outputs
        if not readers and not is_output:
            continue
        tensor = ("tensor", name)
        if name in producer:
            source = ("op", producer[name])
            network.add_edge(source, tensor, capacity=_ns(costs.tensors[name].link_ms))
            for reader in readers:
                network.add_edge(("op", reader), source, capacity=_INFINITE)  # a device reader needs a device producer
        elif input_may_cross:
            network.add_edge(_SOURCE, tensor, capacity=_ns(costs.tensors[name].link_ms))
        else:
            network.add_edge(_SOURCE, tensor, capacity=_INFINITE)
        for reader in readers:
            network.add_edge(tensor, ("op", reader), capacity=_INFINITE)
        if is_output:
            network.add_edge(tensor, _SINK, capacity=_INFINITE)
    return network


def min_cut(costs: OpCosts, **constraints: object) -> Partition:
    """The device side of the cheapest split (the smallest such side when several tie).

    Keyword arguments are flow_network's constraints. SplitInferError when they leave no split
    (say, an op pinned to both sides)."""
    network = flow_network(costs, **constraints)  # type: ignore[arg-type]
    try:
        value, (reachable, _) = nx.minimum_cut(network, _SOURCE, _SINK)
    except nx.NetworkXUnbounded:
        raise SplitInferError("the constraints leave no split: every partition sends a forbidden tensor or moves a pinned op") from None
    device = frozenset(node[1] for node in reachable if node[0] == "op")
    return Partition(device, value / 1e6)
