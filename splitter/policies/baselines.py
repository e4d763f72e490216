"""The two baselines every plan is compared against: everything on the device, everything on the
server. `cloud-only` sends the raw input, so it needs constraints that allow it
(`allow_raw_input`)."""

from __future__ import annotations

from collections.abc import Sequence

from protos.errors import SplitInferError
from splitter.cost.cut_cost import CutCost
from splitter.policies._registry import register_policy
from splitter.policies.constraints import Constraints


def _only(costs: Sequence[CutCost], constraints: Constraints, name: str) -> CutCost:
    found = [c for c in costs if c.name == name]
    if not found:
        raise SplitInferError(f"the profile has no {name!r} cut; profile the model again")
    admitted = constraints.admit(costs)
    if found[0] not in admitted:
        raise SplitInferError(f"the constraints exclude the {name!r} cut ({constraints})")
    return found[0]


@register_policy("edge-only")
class EdgeOnly:
    """Everything on the device (the baseline with no network)."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return _only(costs, constraints, "output")


@register_policy("cloud-only")
class CloudOnly:
    """Everything on the server: the raw input is sent (needs --allow-raw-input)."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return _only(costs, constraints, "input")
