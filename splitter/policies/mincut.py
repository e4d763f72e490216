"""`mincut`: the lowest-latency split of the whole op graph, by minimum s–t cut (DADS, Hu et al.,
INFOCOM 2019; splitter.policies.mincut_solver). Unlike `neurosurgeon` it is not limited to the profiled prefix
cuts: on a DAG it may cut parallel branches at different depths. It needs the profile's per-op
costs (splitter.profile.ops).

Constraints map onto the flow network: privacy forbids the model input's transfer edge; a minimum
head depth pins the first ops of the graph's order to the device; a required split pins the ops
that make the model outputs to the server. The all-on-device cut is priced beside the min cut (it
pays no round trip, which a cut cannot express). A deadline is checked on the result: nothing is
faster. A memory limit is not a cut constraint: when the best cut's head needs too much, a
Lagrangian search prices each weight byte on the device until the head fits, and every prefix cut
is priced too; the cheapest that fits wins (exact without a memory limit, a heuristic with one).

When the chosen cut is one the profile measured, the measured cost is reported (it is the better
prediction of that cut); otherwise the op-level sum is.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos.errors import SplitInferError
from splitter.cost.cut_cost import CutCost
from splitter.cost.op_cost import OpCosts, device_set_cost, prefix_costs
from splitter.policies._registry import register_policy
from splitter.policies.constraints import Constraints
from splitter.policies.mincut_solver import min_cut

# Bounds of the Lagrangian search, in ms per weight byte on the device.
_PENALTY_START, _PENALTY_MAX = 1e-9, 1e3


def _solve(costs: OpCosts, constraints: Constraints, penalty: float = 0.0) -> CutCost:
    graph = costs.graph
    server_pinned = (
        [] if constraints.allow_edge_only else [op.name for op in graph.ops if set(op.outputs) & set(graph.outputs)]
    )
    try:
        partition = min_cut(
            costs,
            input_may_cross=constraints.allow_raw_input,
            device_pinned=[op.name for op in graph.ops[: constraints.min_head_ops]],
            server_pinned=server_pinned,
            device_penalty_ms_per_byte=penalty,
        )
    except SplitInferError as err:
        raise SplitInferError(f"no cut satisfies the constraints ({constraints}): {err}") from None
    return device_set_cost(costs, partition.device)


def _fitting(costs: OpCosts, constraints: Constraints, limit: int) -> list[CutCost]:
    """Cuts from a search over the price of a device weight byte, smallest price that fits first."""
    found: list[CutCost] = []
    low, high = 0.0, _PENALTY_START
    while high <= _PENALTY_MAX:
        cost = _solve(costs, constraints, high)
        if cost.head_memory_bytes <= limit:
            found.append(cost)
            break
        low, high = high, high * 4
    else:
        return found
    for _ in range(12):
        middle = (low * high) ** 0.5 if low > 0 else high / 4
        cost = _solve(costs, constraints, middle)
        if cost.head_memory_bytes <= limit:
            found.append(cost)
            high = middle
        else:
            low = middle
    return found


@register_policy("mincut")
class MinCut:
    """The lowest-latency split of the whole op graph, parallel branches included (DADS min-cut)."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        ops: OpCosts | None = getattr(costs, "ops", None)
        if ops is None:
            raise SplitInferError(
                "policy 'mincut' needs per-op costs and this profile has none; profile the model again (`splitinfer profile`)"
            )
        candidates = [_solve(ops, constraints)]
        if constraints.allow_edge_only:
            candidates.append(device_set_cost(ops, {op.name for op in ops.graph.ops}))
        limit = constraints.max_head_memory_bytes
        if limit is not None and all(c.head_memory_bytes > limit for c in candidates):
            candidates += _fitting(ops, constraints, limit) + prefix_costs(ops)
        best = min(constraints.admit(candidates), key=lambda c: (c.total_ms, c.head_size))
        measured = next((c for c in costs if c.name == best.name and c.tensors == best.tensors), None)
        return measured if measured is not None and constraints.allows(measured) else best
