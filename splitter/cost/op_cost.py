"""The CostModel at op level: a Profile's per-op costs (splitter.profile.ops), a NetworkModel and a
codec → the price of running each op on either side and of sending each tensor, and the CutCost of
any set of ops on the device, prefix or not.

    split cut  = edge overhead + Σ device ops' edge time    (× the profile's edge slowdown)
               + encode overhead × slowdown (a request's encoding follows its head: Profile.encode_overhead_ms)
               + Σ crossing tensors (encode × slowdown + bytes / bandwidth + decode)
               + RTT + server overhead + Σ server ops' time + the reply down the downlink + the call (Profile.call_ms)
    all-device = edge overhead + Σ every op's edge time     (× slowdown)

The same formula as splitter.cost.cut_cost, summed over ops instead of measured per prefix, so that a
partitioner can price cuts that were never profiled (parallel branches cut at different depths).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from protos.errors import SplitInferError
from protos.power import PowerModel
from splitter.cost.cut_cost import CutCost, edge_only_cost, make_cost, result_nbytes
from splitter.cost.network import NetworkModel
from splitter.graph.cuts import Cut, crossing_tensors, cut_from_device_ops, enumerate_cuts
from splitter.graph.graph import Graph
from splitter.graph.memory import head_memory
from splitter.profile.schema import CodecCost, Profile


@dataclass(frozen=True)
class TensorCost:
    nbytes: int
    encode_ms: float  # on the target device
    transfer_ms: float
    decode_ms: float

    @property
    def link_ms(self) -> float:
        """What sending this tensor adds to a request's latency."""
        return self.encode_ms + self.transfer_ms + self.decode_ms


@dataclass(frozen=True)
class OpCosts:
    graph: Graph
    # Per op: its time on the target device (edge slowdown applied) and on the server.
    edge_ms: dict[str, float]
    server_ms: dict[str, float]
    # Per activation tensor, with the plan's codec and network.
    tensors: dict[str, TensorCost]
    edge_overhead_ms: float
    server_overhead_ms: float
    # What a request's encoding costs beyond its tensors' (on the target device).
    encode_overhead_ms: float
    network: NetworkModel
    codec: str
    power: PowerModel
    # The reply's bytes (splitter.cost.cut_cost.result_nbytes), which every split cut receives.
    result_nbytes: int = 0
    # The gRPC call's own cost (Profile.call_ms).
    call_ms: float = 0.0
    prefix_cuts: list[Cut] = field(compare=False, repr=False, default_factory=list)

    def split_constant_ms(self) -> float:
        """What every split cut pays whatever ops it puts where."""
        return (
            self.edge_overhead_ms
            + self.encode_overhead_ms
            + self.network.rtt_ms
            + self.server_overhead_ms
            + self.network.result_ms(self.result_nbytes)
            + self.call_ms
        )


def op_costs(profile: Profile, network: NetworkModel, codec: str, power: PowerModel) -> OpCosts:
    if profile.ops is None:
        raise SplitInferError(
            f"profile of {profile.model_id!r} has no per-op costs; profile the model again (splitinfer profile)"
        )
    ops = profile.ops
    slowdown = profile.edge_slowdown
    tensors = {}
    for tensor in ops.tensors:
        try:
            measured: CodecCost = tensor.codecs[codec]
        except KeyError:
            raise SplitInferError(
                f"codec {codec!r} was not profiled per op; profiled: {sorted(tensor.codecs)}"
            ) from None
        tensors[tensor.name] = TensorCost(
            measured.nbytes, measured.encode_ms * slowdown, network.transfer_ms(measured.nbytes), measured.decode_ms
        )
    graph = ops.graph()
    return OpCosts(
        graph=graph,
        edge_ms={o.name: o.edge_ms * slowdown for o in ops.ops},
        server_ms={o.name: o.server_ms for o in ops.ops},
        tensors=tensors,
        edge_overhead_ms=ops.edge_overhead_ms * slowdown,
        server_overhead_ms=ops.server_overhead_ms,
        encode_overhead_ms=profile.encode_overhead_ms.get(codec, 0.0) * slowdown,
        network=network,
        codec=codec,
        power=power,
        result_nbytes=result_nbytes(profile.output_nbytes),
        call_ms=profile.call_ms,
        prefix_cuts=_prefix_cuts(graph),
    )


_PREFIX_CACHE: dict[int, tuple[Graph, list[Cut]]] = {}


def _prefix_cuts(graph: Graph) -> list[Cut]:
    """enumerate_cuts of the graph, remembered for the graph's op list (a sweep plans hundreds of
    times with one profile)."""
    key = hash(tuple((op.name, op.inputs, op.outputs) for op in graph.ops))
    cached = _PREFIX_CACHE.get(key)
    if cached is None or cached[0].ops != graph.ops:
        cached = (graph, enumerate_cuts(graph, include_input=True))
        _PREFIX_CACHE.clear()  # one model at a time is what planning needs
        _PREFIX_CACHE[key] = cached
    return cached[1]


def device_set_cost(costs: OpCosts, device: Collection[str]) -> CutCost:
    """The CutCost of running exactly `device` on the device (SplitInferError if data would have
    to flow back from the server), named as splitter.graph.cuts names it."""
    graph = costs.graph
    device = frozenset(device)
    cut = cut_from_device_ops(graph, device, prefix_cuts=costs.prefix_cuts)
    device_ops = [op for op in graph.ops if op.name in device]
    head_ms = sum(costs.edge_ms[op.name] for op in device_ops) + (costs.edge_overhead_ms if device_ops else 0.0)
    if len(device) == len(graph.ops):
        memory = head_memory(graph, device_ops, graph.outputs)
        return edge_only_cost(cut.name, cut.head_size, head_ms, costs.power, memory.total_bytes)
    sent = crossing_tensors(graph, set(device)) if device_ops else tuple(graph.inputs)
    parts = [costs.tensors[name] for name in sent]
    memory = head_memory(graph, device_ops, sent)
    return make_cost(
        name=cut.name,
        head_size=cut.head_size,
        tensors=sent,
        codec=costs.codec,
        nbytes=sum(p.nbytes for p in parts),
        head_ms=head_ms,
        encode_ms=costs.encode_overhead_ms + sum(p.encode_ms for p in parts),
        network=costs.network,
        decode_ms=sum(p.decode_ms for p in parts),
        tail_ms=costs.server_overhead_ms + sum(costs.server_ms[op.name] for op in graph.ops if op.name not in device),
        sends_input=any(name in graph.inputs for name in sent),
        power=costs.power,
        result_nbytes=costs.result_nbytes,
        call_ms=costs.call_ms,
        head_memory_bytes=memory.total_bytes,
        head_ops=cut.head_ops,
    )


def prefix_costs(costs: OpCosts) -> list[CutCost]:
    """Every prefix cut priced at op level (the profiled cuts, as this model sees them)."""
    return [device_set_cost(costs, {op.name for op in costs.graph.ops[: cut.head_size]}) for cut in costs.prefix_cuts]
