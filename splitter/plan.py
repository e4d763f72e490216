"""Planning: a Profile and a NetworkModel → the chosen cut, with the cost table that chose it.

The policy's choice is checked against the constraints here, once for every policy: a plug-in that
returns a cut the constraints exclude, or something that is not a cut's cost, is an error naming
the policy, never a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.codec import Codec
from protos.errors import SplitInferError
from splitter.cost import CostTable, CutCost, predict, profile_power
from splitter.network import NetworkModel
from splitter.policies import Constraints, create_policy
from splitter.power import PowerModel
from splitter.profile import Profile

DEFAULT_CODEC = "int8+zstd"
DEFAULT_POLICY = "neurosurgeon"


@dataclass(frozen=True)
class Plan:
    model_id: str
    network: NetworkModel
    codec: str
    policy: str
    costs: tuple[CutCost, ...]
    chosen: CutCost

    def baseline(self, name: str) -> CutCost | None:
        """The `output` (all on the device) or `input` (all on the server) cut, if profiled."""
        return next((c for c in self.costs if c.name == name), None)


def cost_table(profile: Profile, network: NetworkModel, codec: str = DEFAULT_CODEC, power: PowerModel | None = None) -> CostTable:
    """Every profiled cut's cost, and the per-op costs when the profile has them."""
    power = power if power is not None else profile_power(profile)
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
) -> Plan:
    table = cost_table(profile, network, codec, power)
    return Plan(profile.model_id, network, codec, policy, table.cuts, choose(table, policy, constraints))
