"""`energy`: the cut that costs the device the least energy per request, under the plan's power
model (protos.power: compute power × head and encode time + radio energy per byte × bytes sent
+ idle power × time spent waiting). Pair it with a deadline (`Constraints.deadline_ms`): the
cheapest cut is often a slow one.

Ties go to the lower latency, then the smaller head."""

from __future__ import annotations

from collections.abc import Sequence

from splitter.cost.cut_cost import CutCost
from splitter.policies._registry import register_policy
from splitter.policies.constraints import Constraints


@register_policy("energy")
class MinEnergy:
    """The least device energy per request, under the plan's power figures."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return min(constraints.admit(costs), key=lambda c: (c.energy_mj, c.total_ms, c.head_size))
