"""Name -> plug-in registries. Every defense, attack, architecture and dataset is looked up here."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from arena.errors import InvalidParameters, UnknownPlugin, brief

T = TypeVar("T")

OPTION = "arena_option"
"""Field-metadata key of a generic option (e.g. an attacker countermeasure) that is left out of
canonical parameters, and so of match keys, while it is at its default: adding such an option
to every plug-in does not change the keys (and seeds) of existing matches."""


def first_doc_line(obj: object) -> str:
    """The one-line description shown by ``arena list``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """A mapping from registered names to plug-ins of one kind (defense, attack, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._versions: dict[str, int] = {}

    def register(self, name: str, version: int = 1) -> Callable[[T], T]:
        """Decorator: ``@DEFENSES.register("rounding", version=2)``. Names are unique.

        ``version`` is part of every match and trial key that uses the plug-in: bump it whenever
        the plug-in's behaviour changes, so a rerun plays its matches again instead of reusing
        results of the older code."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(
                f"{self.kind} {name!r}: version must be a positive int, not {version!r}"
            )

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            self._versions[name] = version
            return item

        return add

    def version(self, name: str) -> int:
        """The registered version of ``name`` (raises UnknownPlugin like :meth:`get`)."""
        self.get(name)
        return self._versions[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownPlugin(self.kind, name, list(self._items)) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {name: first_doc_line(self._items[name]) for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def build_plugin(registry: Registry[type[T]], name: str, params: Mapping[str, Any]) -> T:
    """Instantiate a frozen-dataclass plug-in, turning bad hyperparameters into a typed error."""
    cls = registry.get(name)
    if dataclasses.is_dataclass(cls):
        accepted = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise InvalidParameters(
                f"{registry.kind} {name!r} has no parameter {', '.join(map(brief, unknown))}; "
                f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
            )
    try:
        return cls(**params)
    except InvalidParameters:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidParameters(f"{registry.kind} {name!r}: {exc}") from None


def canonical_params(
    registry: Registry[type[T]], name: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Every hyperparameter with defaults filled in, so equal plug-ins get equal match keys."""
    plugin = build_plugin(registry, name, params)
    if dataclasses.is_dataclass(plugin):
        return {
            f.name: getattr(plugin, f.name)
            for f in dataclasses.fields(plugin)
            if f.init and not (f.metadata.get(OPTION) and getattr(plugin, f.name) == f.default)
        }
    return dict(params)


def plugin_label(name: str, plugin: object) -> str:
    """``name`` plus the hyperparameters that differ from defaults: ``rounding(decimals=1)``."""
    if not dataclasses.is_dataclass(plugin):
        return name
    changed = [
        f"{f.name}={getattr(plugin, f.name)}"
        for f in dataclasses.fields(plugin)
        if f.init and f.default is not dataclasses.MISSING and getattr(plugin, f.name) != f.default
    ]
    return f"{name}({','.join(changed)})" if changed else name
