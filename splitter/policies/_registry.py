"""The policy registry: policies by name, registered by decorator or found through the
`splitinfer.policies` entry-point group (splitter.plugins).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Protocol

from splitter.cost.cut_cost import CutCost
from splitter.plugins import PluginRegistry
from splitter.policies.constraints import Constraints

ENTRY_POINT_GROUP = "splitinfer.policies"


class Policy(Protocol):
    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost: ...


def _unfit(policy: object) -> str | None:
    return None if callable(getattr(policy, "choose", None)) else "has no choose(costs, constraints) method"


_REGISTRY: PluginRegistry[Policy] = PluginRegistry("policy", ENTRY_POINT_GROUP, _unfit)


def register_policy(name: str) -> Callable[[type], type]:
    return _REGISTRY.register(name)


def reset_plugins() -> None:
    """Forget discovered plug-ins, so the next lookup scans the installed packages again."""
    _REGISTRY.reset()


def list_policies() -> list[str]:
    return _REGISTRY.names()


def create_policy(name: str) -> Policy:
    return _REGISTRY.create(name)


def describe_policy(name: str) -> str:
    """The first line of the policy's class docstring ("" without one), plug-ins included."""
    doc = inspect.getdoc(type(create_policy(name))) or ""
    return doc.splitlines()[0] if doc else ""
