"""The Policy registry: `choose(costs, constraints) -> CutCost`, looked up by name.

A policy sees only predicted costs, never the network or the model, so planning stays a pure,
deterministic function of a Profile and a NetworkModel. Register a class with
`@register_policy("name")`; `create_policy(name)` builds it.

Other packages add policies without touching this project: they declare an entry point in the
`splitinfer.policies` group (`myplugin = "mypackage.policies:MyPolicy"`), whose name is the policy's
name and whose object is the class (or any callable returning a policy). Entry points are
discovered on the first lookup and a plug-in is imported only when its name is asked for, so a
broken plug-in breaks only itself, with an error that names it. A plug-in may not take a built-in's
name: both would claim it, and which one a plan used would depend on what is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol

from protos.errors import SplitInferError
from splitter.cost import CutCost

ENTRY_POINT_GROUP = "splitinfer.policies"


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
    # Device memory for the head: weights it reads + its peak of live activations (splitter.memory).
    max_head_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.min_head_ops < 0:
            raise SplitInferError(f"min_head_ops must be non-negative, got {self.min_head_ops}")
        if self.deadline_ms is not None and not (self.deadline_ms > 0 and math.isfinite(self.deadline_ms)):
            raise SplitInferError(f"deadline_ms must be a positive number, got {self.deadline_ms}")
        if self.max_head_memory_bytes is not None and self.max_head_memory_bytes < 0:
            raise SplitInferError(f"max_head_memory_bytes must be non-negative, got {self.max_head_memory_bytes}")

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
        return None

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
        if "min_head_ops" in reasons and all(r == "min_head_ops" for r in reasons):
            return f": the largest head has {max(c.head_size for c in costs)} ops"
        return ""


class Policy(Protocol):
    def choose(self, costs: Sequence[CutCost], constraints: Constraints) -> CutCost: ...


_POLICIES: dict[str, Callable[[], Policy]] = {}
# name → the entry points declaring it; None until the first lookup discovers them.
_PLUGINS: dict[str, list[EntryPoint]] | None = None
_LOADED: dict[str, Callable[[], Policy]] = {}


def register_policy(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _POLICIES and _POLICIES[name] is not cls:
            raise ValueError(f"policy {name!r} is already registered (by {_POLICIES[name]!r})")
        _POLICIES[name] = cls
        return cls

    return decorate


def _plugins() -> dict[str, list[EntryPoint]]:
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, list[EntryPoint]] = {}
        for point in entry_points(group=ENTRY_POINT_GROUP):
            # One distribution can be on the path twice (an egg-link and a site dir): same value, one plug-in.
            if all(p.value != point.value for p in found.get(point.name, [])):
                found.setdefault(point.name, []).append(point)
        _PLUGINS = found
    return _PLUGINS


def reset_plugins() -> None:
    """Forget discovered plug-ins, so the next lookup scans the installed packages again."""
    global _PLUGINS
    _PLUGINS = None
    _LOADED.clear()


def list_policies() -> list[str]:
    return sorted(set(_POLICIES) | set(_plugins()))


def _describe(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    source = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{point.value}{source}"


def _load_plugin(name: str, points: list[EntryPoint]) -> Callable[[], Policy]:
    if name in _LOADED:
        return _LOADED[name]
    if len(points) > 1:
        raise SplitInferError(f"policy {name!r} is declared by several plug-ins: {'; '.join(map(_describe, points))}; uninstall all but one")
    (point,) = points
    try:
        factory = point.load()
    except Exception as err:  # an import error, a syntax error, a missing attribute: all the plug-in's
        raise SplitInferError(f"policy plug-in {name!r} ({_describe(point)}) failed to load: {type(err).__name__}: {err}") from err
    if not callable(factory):
        raise SplitInferError(f"policy plug-in {name!r} ({_describe(point)}) is {factory!r}, not a policy class")
    _LOADED[name] = factory
    return factory


def create_policy(name: str) -> Policy:
    plugins = _plugins()
    if name in _POLICIES:
        if name in plugins:
            raise SplitInferError(
                f"policy {name!r} is built in, and plug-in {_describe(plugins[name][0])} declares it too; rename the plug-in's entry point"
            )
        return _POLICIES[name]()
    if name not in plugins:
        raise SplitInferError(f"unknown policy {name!r}; registered: {', '.join(list_policies())}")
    factory = _load_plugin(name, plugins[name])
    try:
        policy = factory()
    except Exception as err:
        raise SplitInferError(f"policy plug-in {name!r} ({_describe(plugins[name][0])}) failed to start: {type(err).__name__}: {err}") from err
    if not callable(getattr(policy, "choose", None)):
        raise SplitInferError(f"policy plug-in {name!r} ({_describe(plugins[name][0])}) has no choose(costs, constraints) method")
    return policy
