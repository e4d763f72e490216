"""`neurosurgeon`: the cut with the lowest predicted end-to-end latency (Kang et al., ASPLOS 2017).

Ties go to the cut with the smaller head, so the choice is deterministic."""

from __future__ import annotations

from collections.abc import Sequence

from splitter.cost.cut_cost import CutCost
from splitter.policies._registry import register_policy
from splitter.policies.constraints import Constraints


@register_policy("neurosurgeon")
class MinLatency:
    """The lowest predicted end-to-end latency (Neurosurgeon)."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return min(constraints.admit(costs), key=lambda c: (c.total_ms, c.head_size))
