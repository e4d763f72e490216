"""`throughput`: the cut with the most frames per second when the device, the uplink and the server
work on successive frames at once (a video stream): the rate is set by the slowest stage,
1 / max(head + encode, transfer, decode + tail). The round trip adds latency, not a limit on rate.

Ties (several cuts limited by the same stage) go to the lower latency, then the smaller head."""

from __future__ import annotations

from collections.abc import Sequence

from splitter.cost.cut_cost import CutCost
from splitter.policies._registry import register_policy
from splitter.policies.constraints import Constraints


@register_policy("throughput")
class MaxThroughput:
    """The most frames per second with device, uplink and server pipelined."""

    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost:
        return min(constraints.admit(costs), key=lambda c: (c.period_ms, c.total_ms, c.head_size))
