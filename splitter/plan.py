"""Planning: a Profile and a NetworkModel → the chosen cut, with the cost table that chose it."""

from __future__ import annotations

from dataclasses import dataclass

from splitter.cost import CutCost, predict
from splitter.network import NetworkModel
from splitter.policies import Constraints, create_policy
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


def plan(
    profile: Profile,
    network: NetworkModel,
    *,
    codec: str = DEFAULT_CODEC,
    policy: str = DEFAULT_POLICY,
    constraints: Constraints = Constraints(),
) -> Plan:
    costs = predict(profile, network, codec)
    chosen = create_policy(policy).choose(costs, constraints)
    return Plan(profile.model_id, network, codec, policy, tuple(costs), chosen)
