"""Stamping specs with the versions of the registered plug-ins they use.

Every plug-in is registered with a version (:meth:`arena.registry.Registry.register`). Configs
stamp the current versions into the specs they expand into matches and trials, so a bumped
plug-in changes the key of every match that uses it: a rerun plays those matches again instead
of reusing a stale result, while every other match keeps its key and stays skipped. Names that
are not registered (``torchvision/resnet18``, ``package.module:factory``, ``npz:PATH``) carry
version 1: their code is the user's, versioned by the user's own files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from arena.attacker import ATTACKS
from arena.data import DATASETS
from arena.defenses import DEFENSES
from arena.models import ARCHITECTURES
from arena.registry import Registry, canonical_params
from arena.removal import REMOVALS
from arena.specs import MatchSpec, PluginSpec, VictimSpec

T = TypeVar("T")


def registered_version(registry: Registry[T], name: str) -> int:
    """The version ``name`` is registered with; 1 for a name the registry does not hold."""
    return registry.version(name) if name in registry else 1


def versioned_plugin(registry: Registry[Any], spec: PluginSpec) -> PluginSpec:
    """``spec`` stamped with its plug-in's registered version, parameters as given."""
    return spec.model_copy(update={"version": registered_version(registry, spec.name)})


def canonical_plugin(
    registry: Registry[type[T]], name: str, params: Mapping[str, Any]
) -> PluginSpec:
    """A plug-in spec as keys want it: every parameter with defaults filled in, and versioned."""
    return PluginSpec(
        name=name,
        params=canonical_params(registry, name, params),
        version=registered_version(registry, name),
    )


def versioned_victim(victim: VictimSpec) -> VictimSpec:
    """``victim`` (and a zoo's members) stamped with its architecture's and dataset's versions."""
    members = None
    if victim.members is not None:
        members = tuple(versioned_victim(m) for m in victim.members)
    return victim.model_copy(
        update={
            "arch_version": registered_version(ARCHITECTURES, victim.arch),
            "dataset_version": registered_version(DATASETS, victim.dataset),
            "members": members,
        }
    )


def substitute_version(substitute_arch: str | None) -> int:
    """The version of a match's own substitute architecture (the victim's counts otherwise)."""
    return 1 if substitute_arch is None else registered_version(ARCHITECTURES, substitute_arch)


def versioned_match(spec: MatchSpec) -> MatchSpec:
    """Every plug-in of ``spec`` stamped with its registered version (parameters untouched)."""
    return spec.model_copy(
        update={
            "victim": versioned_victim(spec.victim),
            "defenses": tuple(versioned_plugin(DEFENSES, d) for d in spec.defenses),
            "attack": versioned_plugin(ATTACKS, spec.attack),
            "removal": None if spec.removal is None else versioned_plugin(REMOVALS, spec.removal),
            "substitute_arch_version": substitute_version(spec.substitute_arch),
        }
    )


def plugin_versions(specs: Iterable[MatchSpec]) -> dict[str, int]:
    """Every plug-in the matches use, as ``kind:name`` -> version (a study keeps it, so a bump
    is noticed on resume, :func:`orchestration.study.open_study`)."""
    versions: dict[str, int] = {}
    for spec in specs:
        victims = [spec.victim, *(spec.victim.members or ())]
        for victim in victims:
            versions[f"architecture:{victim.arch}"] = victim.arch_version
            versions[f"dataset:{victim.dataset}"] = victim.dataset_version
        for defense in spec.defenses:
            versions[f"defense:{defense.name}"] = defense.version
        versions[f"attack:{spec.attack.name}"] = spec.attack.version
        if spec.removal is not None:
            versions[f"removal:{spec.removal.name}"] = spec.removal.version
        if spec.substitute_arch is not None:
            versions[f"architecture:{spec.substitute_arch}"] = spec.substitute_arch_version
    return dict(sorted(versions.items()))
