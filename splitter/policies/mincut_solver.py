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
server returns it). So every finite s–t cut is a valid split, priced exactly as splitter.cost.op_cost
prices it less the constant every split pays (RTT and the two sessions' overheads), and the
minimum cut is the best split.

Planning must take well under 50 ms on a model of hundreds of ops (bench/plan_speed.py), so the
max-flow is scipy's (Dinic's algorithm, compiled): networkx's took 0.15–0.5 s on PP-OCRv4's text
detector (328 ops), scipy's 5–9 ms, the same cut in every case compared. Two exact reductions
shrink the network first: an op's s → op and op → t edges both lose the smaller of the two (every
cut pays exactly one of them, so every cut's value drops by the same amount and the minimum stays
where it was), and a tensor read by one op only, and not a model output, needs no node of its own
(producer → reader carries its cost). Capacities are integer nanoseconds; scipy counts in int32,
so when the finite capacities sum to more than 2^30 ns (~1.07 s: slow links, where every
activation's transfer is seconds) they are counted in the smallest unit that fits, and the cut
found is optimal to within that unit per edge it cuts (tens of ns); its reported value is exact.

Constraints enter as infinite edges: an op pinned to the device gets s → op ∞, one pinned to the
server op → t ∞, a model input that must stay private gets s → x ∞. `device_penalty_ms_per_byte`
adds a price per weight byte on the device side (the Lagrangian of a memory limit).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from protos.errors import SplitInferError
from splitter.cost.op_cost import OpCosts

_SOURCE, _SINK = 0, 1
# Capacity of an edge never cut; replaced by more than every finite capacity together before the flow runs.
_NEVER = -1
_INT32_BUDGET = 1 << 30


def _ns(ms: float) -> int:
    return max(0, round(ms * 1e6))


@dataclass(frozen=True)
class Partition:
    device: frozenset[str]
    # The cut's capacity in ms: the split's latency less OpCosts.split_constant_ms().
    cut_ms: float


class _FlowNetwork:
    """A directed graph with integer capacities (ns, or _NEVER), solved by scipy's max-flow."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        # Parallel edges are one edge with their capacities summed.
        self.capacity: dict[tuple[int, int], int] = {}

    def add(self, tail: int, head: int, capacity: int) -> None:
        if capacity:
            self.capacity[tail, head] = _add(self.capacity.get((tail, head), 0), capacity)

    def source_side(self) -> tuple[int, set[int]] | None:
        """(the minimum cut's value in ns, the nodes the residual network reaches from _SOURCE: the
        smallest source side of a minimum cut); None when every cut has a never-cut edge."""
        edges = np.array([(*edge, capacity) for edge, capacity in self.capacity.items()], dtype=np.int64).reshape(-1, 3)
        tails, heads, capacities = edges.T
        never = capacities == _NEVER
        if _SINK in self._reached(tails[never], heads[never], np.ones(int(never.sum()), np.int32)):
            return None
        # scipy's max-flow counts in int32. With no never-cut path the flow is below the finite
        # capacities' sum, so a never-cut edge may carry just more than that sum; and the unit
        # stays 1 ns unless that sum exceeds 2^30 ns (~1.07 s), when it grows to fit.
        total = int(capacities[~never].sum())
        unit = max(1, -(-total // _INT32_BUDGET))
        scaled = np.where(never, total // unit + 1, capacities // unit).astype(np.int32)
        matrix = sparse.csr_matrix((scaled, (tails, heads)), shape=(self.nodes, self.nodes))
        residual = (matrix - maximum_flow(matrix, _SOURCE, _SINK, method="dinic").flow).tocoo()
        open_ = residual.data > 0
        reached = self._reached(residual.row[open_], residual.col[open_], residual.data[open_])
        # The cut's value in unscaled ns.
        value = sum(
            capacity for (tail, head), capacity in self.capacity.items() if tail in reached and head not in reached
        )
        return value, reached

    def _reached(self, tails: np.ndarray, heads: np.ndarray, weights: np.ndarray) -> set[int]:
        matrix = sparse.csr_matrix((weights, (tails, heads)), shape=(self.nodes, self.nodes))
        return set(breadth_first_order(matrix, _SOURCE, directed=True, return_predecessors=False).tolist())


def min_cut(
    costs: OpCosts,
    *,
    input_may_cross: bool = True,
    device_pinned: Collection[str] = (),
    server_pinned: Collection[str] = (),
    device_penalty_ms_per_byte: float = 0.0,
) -> Partition:
    """The device side of the cheapest split (the smallest such side when several tie).

    SplitInferError when the constraints leave no split (say, an op pinned to both sides)."""
    graph = costs.graph
    node = {op.name: 2 + index for index, op in enumerate(graph.ops)}
    to_server, to_device = _op_capacities(costs, device_pinned, server_pinned, device_penalty_ms_per_byte)
    edges, extra_nodes, to_device = _tensor_edges(costs, node, input_may_cross, to_device)
    network, routed = _flow_network(costs, node, to_server, to_device, edges, extra_nodes)
    solved = network.source_side()
    if solved is None:
        raise SplitInferError(
            "the constraints leave no split: every partition sends a forbidden tensor or moves a pinned op"
        )
    flow, reached = solved
    device = frozenset(op.name for op in graph.ops if node[op.name] in reached)
    return Partition(device, (routed + flow) / 1e6)


def _op_capacities(
    costs: OpCosts, device_pinned: Collection[str], server_pinned: Collection[str], penalty_ms_per_byte: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Per op: what running it on the server costs (s → op) and on the device (op → t), in ns."""
    graph = costs.graph
    to_server = {op.name: _ns(costs.server_ms[op.name]) for op in graph.ops}
    to_device = {op.name: _ns(costs.edge_ms[op.name]) for op in graph.ops}
    if penalty_ms_per_byte:
        # Each weight is charged to the first op that reads it: shared weights are paid once.
        charged: set[str] = set()
        for op in graph.ops:
            new = [w for w in op.weights if w not in charged]
            charged.update(new)
            to_device[op.name] += _ns(penalty_ms_per_byte * sum(graph.weight_nbytes.get(w, 0) for w in new))
    for name in device_pinned:
        to_server[name] = _NEVER
    for name in server_pinned:
        to_device[name] = _NEVER
    return to_server, to_device


def _tensor_edges(
    costs: OpCosts, node: dict[str, int], input_may_cross: bool, to_device: dict[str, int]
) -> tuple[list[tuple[int, int, int]], int, dict[str, int]]:
    """(the edges that price sending each tensor, how many tensor nodes they add, `to_device` with
    the sending of outputs nobody reads charged to their producers)."""
    graph = costs.graph
    to_device = dict(to_device)
    producer = {out: op.name for op in graph.ops for out in op.outputs}
    readers: dict[str, list[str]] = {}
    for op in graph.ops:
        for name in op.inputs:
            readers.setdefault(name, []).append(op.name)
    # A tensor's sender: its producing op, or the source for a model input (which starts on the device).
    edges: list[tuple[int, int, int]] = []
    extra_nodes = 0
    for name in [*graph.inputs, *producer]:
        reading, is_output = readers.get(name, []), name in graph.outputs
        if not reading and not is_output:
            continue
        made_here = name in producer
        sender = node[producer[name]] if made_here else _SOURCE
        send = _ns(costs.tensors[name].link_ms) if made_here or input_may_cross else _NEVER
        if made_here:
            for reader in reading:
                edges.append((node[reader], sender, _NEVER))  # a device reader needs a device producer
        if len(reading) == 1 and not is_output:
            edges.append((sender, node[reading[0]], send))
        elif not reading and made_here:
            to_device[producer[name]] = _add(to_device[producer[name]], send)
        else:
            tensor = 2 + len(graph.ops) + extra_nodes
            extra_nodes += 1
            edges.append((sender, tensor, send))
            edges += [(tensor, node[reader], _NEVER) for reader in reading]
            if is_output:
                edges.append((tensor, _SINK, _NEVER))
    return edges, extra_nodes, to_device


def _flow_network(
    costs: OpCosts,
    node: dict[str, int],
    to_server: dict[str, int],
    to_device: dict[str, int],
    edges: list[tuple[int, int, int]],
    extra_nodes: int,
) -> tuple[_FlowNetwork, int]:
    """The network, and the ns taken off every cut by routing the smaller of each op's two edges
    (every cut pays exactly one of them, so the minimum stays where it was)."""
    ops = costs.graph.ops
    network = _FlowNetwork(2 + len(ops) + extra_nodes)
    routed = 0
    for op in ops:
        server, device = to_server[op.name], to_device[op.name]
        if server != _NEVER and device != _NEVER:
            both = min(server, device)
            routed += both
            server, device = server - both, device - both
        network.add(_SOURCE, node[op.name], server)
        network.add(node[op.name], _SINK, device)
    for tail, head, capacity in edges:
        network.add(tail, head, capacity)
    return network, routed


def _add(capacity: int, more: int) -> int:
    return _NEVER if _NEVER in (capacity, more) else capacity + more
