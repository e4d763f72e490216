"""The Policy registry: `choose(costs, constraints) -> CutCost`, looked up by name.

A policy sees only predicted costs, never the network or the model, so planning stays a pure,
deterministic function of a Profile and a NetworkModel. Register a class with
`@register_policy("name")`; `create_policy(name)` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from protos.errors import SplitInferError
from splitter.cost import CutCost


@dataclass(frozen=True)
class Constraints:
    # Privacy: by default no cut that sends a model input (the raw photo) off the device. That
    # excludes the `input` cut and, in models that use their input again late, every cut the
    # input still crosses.
    allow_raw_input: bool = False
    # The device runs at least this many ops (a minimum head depth).
    min_head_ops: int = 0
    # False when the whole model cannot or must not run on the device (too big, or the point of
    # the deployment is to offload): the server then runs at least one op.
    allow_edge_only: bool = True

    def admit(self, costs: Sequence[CutCost]) -> list[CutCost]:
        """The costs a policy may choose from; SplitInferError when none is left."""
        allowed = [
            c
            for c in costs
            if c.head_size >= self.min_head_ops
            and (self.allow_edge_only or not c.is_edge_only)
            and (self.allow_raw_input or not c.sends_input)
        ]
        if not allowed:
            raise SplitInferError(f"no cut satisfies the constraints ({self})")
        return allowed


class Policy(Protocol):
    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost: ...


_POLICIES: dict[str, Callable[[], Policy]] = {}


def register_policy(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        _POLICIES[name] = cls
        return cls

    return decorate


def list_policies() -> list[str]:
    return sorted(_POLICIES)


def create_policy(name: str) -> Policy:
    try:
        return _POLICIES[name]()
    except KeyError:
        raise SplitInferError(f"unknown policy {name!r}; registered: {', '.join(list_policies())}") from None
