"""Checks of the form every dataclass plug-in shares: frozen hyperparameters, an own docstring."""

from __future__ import annotations

import dataclasses

from arena.registry import Registry, first_doc_line
from arena.testing.core import expect


def init_fields(cls: type) -> set[str]:
    """The hyperparameters a config may set."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def expect_frozen_dataclass(cls: type, instance: object, base: type) -> None:
    """``cls`` subclasses ``base``, is a dataclass, and ``instance`` refuses every assignment
    (plug-ins are hashed into match keys, so they must never change after being built)."""
    expect(isinstance(cls, type) and issubclass(cls, base), f"not a subclass of {base.__name__}")
    expect(dataclasses.is_dataclass(cls), f"{cls.__name__} is not a dataclass")
    for field in sorted(init_fields(cls) | {"not_a_field"}):
        try:
            setattr(instance, field, 1)
        except dataclasses.FrozenInstanceError:
            continue
        raise AssertionError(f"setting {field!r} worked: declare @dataclass(frozen=True)")


def expect_documented(registry: Registry[type], name: str, base: type) -> None:
    """The class has a docstring of its own: ``arena list`` shows its first line."""
    cls = registry.get(name)
    doc = (cls.__doc__ or "").strip()
    expect(bool(doc), f"{cls.__name__} has no docstring (`arena list` shows its first line)")
    expect(
        not doc.startswith(f"{cls.__name__}("),
        f"{cls.__name__} has only the docstring @dataclass generates; write one",
    )
    expect(doc != (base.__doc__ or "").strip(), f"{cls.__name__} inherits its docstring")
    expect(registry.describe()[name] == first_doc_line(cls), "arena list shows another line")
