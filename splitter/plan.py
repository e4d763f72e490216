"""Planning: a Profile and a NetworkModel → the chosen cut, with the cost table that chose it.

The policy's choice is checked against the constraints here, once for every policy: a plug-in that
returns a cut the constraints exclude, or something that is not a cut's cost, is an error naming
the policy, never a plan.

The codec is part of the decision with `codec="auto"`: every profiled codec whose measured error
at a cut stays within `max_error` (relative L2 error of the activations) is a candidate there, and
the policy chooses among all (cut, codec) pairs. At a low bandwidth that favours the codecs that
send fewest bytes; at a high one, a codec that costs less to encode than the transfer it saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.codec import Codec
from protos.errors import SplitInferError
from splitter.cost import CostTable, CutCost, predict, profile_power
from splitter.network import NetworkModel, parse_share
from splitter.policies import Constraints, create_policy
from splitter.power import PowerModel
from splitter.profile import Profile

DEFAULT_CODEC = "int8+zstd"
DEFAULT_POLICY = "neurosurgeon"
AUTO_CODEC = "auto"


def parse_error_budget(text: str) -> float:
    """`1%` → 0.01, `0.005` → 0.005."""
    return parse_share(text, "error budget")


@dataclass(frozen=True)
class Plan:
    model_id: str
    network: NetworkModel
    codec: str
    policy: str
    costs: tuple[CutCost, ...]
    chosen: CutCost
    max_error: float | None = None

    def baseline(self, name: str) -> CutCost | None:
        """The `output` (all on the device) or `input` (all on the server) cut, if profiled; with
        several codecs, its fastest."""
        return min((c for c in self.costs if c.name == name), key=lambda c: c.total_ms, default=None)

    def best_per_cut(self) -> list[CutCost]:
        """The fastest codec of each cut, in cut order: the readable table of an `auto` plan."""
        best: dict[str, CutCost] = {}
        for cost in self.costs:
            if cost.name not in best or cost.total_ms < best[cost.name].total_ms:
                best[cost.name] = cost
        return list(best.values())


def _auto_table(profile: Profile, network: NetworkModel, max_error: float, power: PowerModel) -> CostTable:
    codecs = sorted({name for cut in profile.cuts for name in cut.codecs})
    costs: list[CutCost] = []
    for codec in codecs:
        for cut, cost in zip(profile.cuts, predict(profile, network, codec, power)):
            within = cut.is_edge_only or cut.codecs[codec].rel_error <= max_error
            if within and not (cut.is_edge_only and codec != codecs[0]):
                costs.append(cost)
    # Per-op costs assume one codec everywhere; a policy that needs them plans with a fixed codec.
    return CostTable(tuple(costs), None)


def cost_table(
    profile: Profile,
    network: NetworkModel,
    codec: str = DEFAULT_CODEC,
    power: PowerModel | None = None,
    max_error: float | None = None,
) -> CostTable:
    """Every profiled cut's cost, and the per-op costs when the profile has them; with `auto`, every
    (cut, codec) pair within the error budget."""
    power = power if power is not None else profile_power(profile)
    if codec == AUTO_CODEC:
        return _auto_table(profile, network, 0.01 if max_error is None else max_error, power)
    ops = None
    if profile.ops is not None:
        from splitter.opcost import op_costs

        ops = op_costs(profile, network, Codec.parse(codec).name, power)
    return CostTable(tuple(predict(profile, network, codec, power)), ops)


def choose(table: CostTable, policy: str, constraints: Constraints) -> CutCost:
    chosen = create_policy(policy).choose(table, constraints)
    if not isinstance(chosen, CutCost):
        raise SplitInferError(f"policy {policy!r} returned {chosen!r}, not a CutCost")
    refusal = constraints.refusal(chosen)
    if refusal is not None:
        raise SplitInferError(f"policy {policy!r} chose cut {chosen.name!r}, which the constraint {refusal} excludes ({constraints})")
    return chosen


def plan(
    profile: Profile,
    network: NetworkModel,
    *,
    codec: str = DEFAULT_CODEC,
    policy: str = DEFAULT_POLICY,
    constraints: Constraints = Constraints(),
    power: PowerModel | None = None,
    max_error: float | None = None,
) -> Plan:
    table = cost_table(profile, network, codec, power, max_error)
    return Plan(profile.model_id, network, codec, policy, table.cuts, choose(table, policy, constraints), max_error)
