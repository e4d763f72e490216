"""The two baselines every plan is compared against: everything on the device, everything on the
server. `cloud-only` sends the raw input, so it needs a profile made with the input cut and
constraints that allow an empty head."""

from __future__ import annotations

from collections.abc import Sequence

from protos.errors import SplitInferError
from splitter.cost import CutCost
from splitter.policies._registry import Constraints, register_policy


def _only(costs: Sequence[CutCost], name: str, hint: str) -> CutCost:
    for cost in costs:
        if cost.name == name:
            return cost
    raise SplitInferError(f"the profile has no {name!r} cut; {hint}")


@register_policy("edge-only")
class EdgeOnly:
    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return _only(constraints.admit(costs), "output", "profile the model again")


@register_policy("cloud-only")
class CloudOnly:
    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        hint = "profile with --cloud-only-cut and plan with --min-head-ops 0"
        return _only(constraints.admit(costs), "input", hint)
