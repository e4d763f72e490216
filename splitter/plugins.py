"""A registry by name with plug-ins from other packages: what policies and task metrics share.

Built-ins register a factory with `registry.register(name)`; other packages declare an entry point
in the registry's group (`myname = "mypackage.module:Factory"`), whose name is the plug-in's name
and whose object is a class or any callable returning the thing. Entry points are discovered on
the first lookup and a plug-in is imported only when its name is asked for, so a broken plug-in
breaks only itself, with an error that names it. A plug-in may not take a built-in's name: both
would claim it, and which one a plan used would depend on what is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from protos.errors import SplitInferError

T = TypeVar("T")


class PluginRegistry(Generic[T]):
    """`kind` names the things in messages ("policy", "metric"); `group` is the entry-point group;
    `check(thing)` returns why a plug-in's product is unfit (None when it is fit)."""

    def __init__(self, kind: str, group: str, check: Callable[[object], str | None]) -> None:
        self.kind, self.group, self._check = kind, group, check
        self._builtins: dict[str, Callable[..., T]] = {}
        # name → the entry points declaring it; None until the first lookup discovers them.
        self._plugins: dict[str, list[EntryPoint]] | None = None
        self._loaded: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._builtins and self._builtins[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._builtins[name]!r})")
            self._builtins[name] = factory
            return factory

        return decorate

    def plugins(self) -> dict[str, list[EntryPoint]]:
        if self._plugins is None:
            found: dict[str, list[EntryPoint]] = {}
            for point in entry_points(group=self.group):
                # One distribution can be on the path twice (an egg-link and a site dir): same value, one plug-in.
                if all(p.value != point.value for p in found.get(point.name, [])):
                    found.setdefault(point.name, []).append(point)
            self._plugins = found
        return self._plugins

    def reset(self) -> None:
        """Forget discovered plug-ins, so the next lookup scans the installed packages again."""
        self._plugins = None
        self._loaded.clear()

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self.plugins()))

    def builtin(self, name: str) -> Callable[..., T] | None:
        return self._builtins.get(name)

    def create(self, name: str, *args: object) -> T:
        """The thing registered as `name`, built with `args`; SplitInferError naming what is known."""
        plugins = self.plugins()
        if name in self._builtins:
            if name in plugins:
                raise SplitInferError(
                    f"{self.kind} {name!r} is built in, and plug-in {_describe(plugins[name][0])} declares it too; "
                    "rename the plug-in's entry point"
                )
            return self._builtins[name](*args)
        if name not in plugins:
            raise SplitInferError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        described = f"{self.kind} plug-in {name!r} ({_describe(plugins[name][0])})"
        factory = self._load(name, plugins[name])
        try:
            thing = factory(*args)
        except Exception as err:
            raise SplitInferError(f"{described} failed to start: {type(err).__name__}: {err}") from err
        unfit = self._check(thing)
        if unfit is not None:
            raise SplitInferError(f"{described} {unfit}")
        return thing

    def _load(self, name: str, points: list[EntryPoint]) -> Callable[..., T]:
        if name in self._loaded:
            return self._loaded[name]
        if len(points) > 1:
            raise SplitInferError(
                f"{self.kind} {name!r} is declared by several plug-ins: {'; '.join(map(_describe, points))}; uninstall all but one"
            )
        (point,) = points
        try:
            factory = point.load()
        except Exception as err:  # an import error, a syntax error, a missing attribute: all the plug-in's
            raise SplitInferError(
                f"{self.kind} plug-in {name!r} ({_describe(point)}) failed to load: {type(err).__name__}: {err}"
            ) from err
        if not callable(factory):
            raise SplitInferError(
                f"{self.kind} plug-in {name!r} ({_describe(point)}) is {factory!r}, not a {self.kind} class"
            )
        self._loaded[name] = factory
        return factory


def _describe(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    source = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"{point.value}{source}"
