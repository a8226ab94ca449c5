"""Which plug-ins an import registered, and the conformance check of each (``arena check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arena.attacker import ATTACKS
from arena.data import DATASETS, default_data_dir
from arena.defenses.registry import DEFENSES
from arena.models import ARCHITECTURES
from arena.registry import Registry
from arena.removal import REMOVALS
from arena.testing.architectures import ArchitectureConformance
from arena.testing.attacks import AttackConformance
from arena.testing.core import Conformance
from arena.testing.datasets import DatasetConformance
from arena.testing.defenses import DefenseConformance
from arena.testing.removals import RemovalConformance

REGISTRIES: tuple[Registry[Any], ...] = (DEFENSES, ATTACKS, ARCHITECTURES, DATASETS, REMOVALS)


def registered() -> dict[str, set[str]]:
    """Every registry's names, by kind."""
    return {registry.kind: set(registry.names()) for registry in REGISTRIES}


def added(before: dict[str, set[str]], after: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(kind, name) of every plug-in in ``after`` that was not in ``before``, sorted."""
    return sorted((kind, name) for kind, names in after.items() for name in names - before[kind])


def conformance_for(kind: str, name: str, data_dir: Path | None = None) -> Conformance:
    """The check of a registered plug-in of ``kind`` with its default hyperparameters."""
    if kind == DEFENSES.kind:
        return DefenseConformance(name)
    if kind == ATTACKS.kind:
        return AttackConformance(name)
    if kind == ARCHITECTURES.kind:
        return ArchitectureConformance(name)
    if kind == DATASETS.kind:
        return DatasetConformance(name, data_dir or default_data_dir())
    if kind == REMOVALS.kind:
        return RemovalConformance(name)
    raise ValueError(f"no conformance check for {kind} plug-ins")
