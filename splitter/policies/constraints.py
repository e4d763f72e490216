"""What a plan must satisfy, whatever its policy: the Constraints every policy honours."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from protos.errors import SplitInferError
from splitter.cost.cut_cost import CutCost


@dataclass(frozen=True)
class Constraints:
    # Privacy: by default no cut that sends a model input (the raw photo) off the device. That
    # excludes the `input` cut and, in models that use their input again late, every cut the
    # input still crosses.
    allow_raw_input: bool = False
    # The device runs at least this many ops (a minimum head depth). A partitioner that builds
    # its own cut (mincut) keeps the first this-many ops of the graph's order on the device.
    min_head_ops: int = 0
    # False when the whole model cannot or must not run on the device (too big, or the point of
    # the deployment is to offload): the server then runs at least one op.
    allow_edge_only: bool = True
    # Latency deadline: no cut whose predicted end-to-end latency exceeds it.
    deadline_ms: float | None = None
    # Device memory for the head: weights it reads + its peak of live activations (splitter.graph.memory).
    max_head_memory_bytes: int | None = None
    # Accuracy: a lossy (cut, codec) whose measured task agreement has a 95 % lower bound below
    # this is excluded (splitter.accuracy.agreement; the plan sets it from the accuracy budget).
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.min_head_ops < 0:
            raise SplitInferError(f"min_head_ops must be non-negative, got {self.min_head_ops}")
        if self.deadline_ms is not None and not (self.deadline_ms > 0 and math.isfinite(self.deadline_ms)):
            raise SplitInferError(f"deadline_ms must be a positive number, got {self.deadline_ms}")
        if self.max_head_memory_bytes is not None and self.max_head_memory_bytes < 0:
            raise SplitInferError(f"max_head_memory_bytes must be non-negative, got {self.max_head_memory_bytes}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise SplitInferError(f"min_agreement must be a share in [0, 1], got {self.min_agreement}")

    def __str__(self) -> str:
        """The rules in force, each with the `splitinfer plan` option that sets it: what an error
        about them shows a user (the dataclass repr would show field names)."""
        rules = []
        if not self.allow_raw_input:
            rules.append("the raw input stays on the device (--allow-raw-input lifts it)")
        if self.min_head_ops:
            rules.append(f"at least {self.min_head_ops} ops on the device (--min-head-ops)")
        if not self.allow_edge_only:
            rules.append("the server runs part of the model (--split-only)")
        if self.deadline_ms is not None:
            rules.append(f"at most {self.deadline_ms:g} ms (--deadline)")
        if self.max_head_memory_bytes is not None:
            rules.append(f"a head within {self.max_head_memory_bytes:,} bytes (--max-head-memory)")
        if self.min_agreement is not None:
            rules.append(f"task agreement of at least {self.min_agreement:.1%} (--max-error)")
        return "; ".join(rules) or "none"

    def allows(self, cost: CutCost) -> bool:
        return self.refusal(cost) is None

    def refusal(self, cost: CutCost) -> str | None:
        """Why this cut is excluded (the first rule it breaks), or None."""
        if cost.head_size < self.min_head_ops:
            return "min_head_ops"
        if not self.allow_edge_only and cost.is_edge_only:
            return "allow_edge_only"
        if not self.allow_raw_input and cost.sends_input:
            return "allow_raw_input"
        if self.deadline_ms is not None and cost.total_ms > self.deadline_ms:
            return "deadline_ms"
        if self.max_head_memory_bytes is not None and cost.head_memory_bytes > self.max_head_memory_bytes:
            return "max_head_memory_bytes"
        if not self.meets_accuracy(cost):
            return "min_agreement"
        return None

    def meets_accuracy(self, cost: CutCost) -> bool:
        """The accuracy rule alone: no measured agreement below min_agreement."""
        return self.min_agreement is None or cost.agreement_lower is None or cost.agreement_lower >= self.min_agreement

    def admit(self, costs: Sequence[CutCost]) -> list[CutCost]:
        """The costs a policy may choose from; SplitInferError, naming the rule that excluded the
        last candidates, when none is left."""
        allowed = [c for c in costs if self.allows(c)]
        if not allowed:
            raise SplitInferError(f"no cut satisfies the constraints ({self}){self._closest(costs)}")
        return allowed

    def _closest(self, costs: Sequence[CutCost]) -> str:
        """The binding rule, with the nearest any cut comes to meeting it."""
        reasons = [self.refusal(c) for c in costs]
        if not costs:
            return ": there are no cuts"
        if "deadline_ms" in reasons:
            best = min(c.total_ms for c, r in zip(costs, reasons) if r == "deadline_ms")
            return f": the fastest cut the other rules allow takes {best:.1f} ms, over the {self.deadline_ms:g} ms deadline"
        if "max_head_memory_bytes" in reasons:
            best = min(c.head_memory_bytes for c, r in zip(costs, reasons) if r == "max_head_memory_bytes")
            return f": the smallest head the other rules allow needs {best:,} bytes, over the {self.max_head_memory_bytes:,}-byte limit"
        if "min_agreement" in reasons:
            best = max(c.agreement_lower for c, r in zip(costs, reasons) if r == "min_agreement")
            return (
                f": the most accurate cut the other rules allow agrees at ≥ {best:.1%} (95% lower bound), "
                f"below the {self.min_agreement:.1%} the accuracy budget needs"
            )
        if "min_head_ops" in reasons and all(r == "min_head_ops" for r in reasons):
            return f": the largest head has {max(c.head_size for c in costs)} ops"
        return ""
