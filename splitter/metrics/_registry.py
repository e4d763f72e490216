"""The task-metric registry: does a split model's answer on one sample agree with the unsplit one's?

A metric is an object with a `name` (its spec, e.g. "rel-error:0.01") and one method,
`passes(reference, split) -> bool`, given the unsplit and the split model's outputs for one
sample (the model's output arrays, in order, each with its batch axis of 1). Built-ins register a
factory with `@register_metric("name")`; the factory takes the text after the spec's colon, if any
("0.01" for "rel-error:0.01"). Other packages add metrics through the `splitinfer.metrics`
entry-point group (splitter.plugins), the way policies are added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from splitter.plugins import PluginRegistry

ENTRY_POINT_GROUP = "splitinfer.metrics"


class Metric(Protocol):
    name: str

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool: ...


def _unfit(metric: object) -> str | None:
    if not callable(getattr(metric, "passes", None)):
        return "has no passes(reference, split) method"
    if not isinstance(getattr(metric, "name", None), str):
        return "has no name"
    return None


_REGISTRY: PluginRegistry[Metric] = PluginRegistry("metric", ENTRY_POINT_GROUP, _unfit)


def register_metric(name: str) -> Callable[[Callable[..., Metric]], Callable[..., Metric]]:
    return _REGISTRY.register(name)


def list_metrics() -> list[str]:
    return _REGISTRY.names()


def reset_plugins() -> None:
    _REGISTRY.reset()


def create_metric(spec: str) -> Metric:
    """`top1`, `top5`, `rel-error:0.01`, or a plug-in's name (with `:ARG` if it takes one)."""
    name, _, argument = spec.partition(":")
    return _REGISTRY.create(name, *([argument] if argument else []))
