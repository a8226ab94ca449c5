"""Every registered architecture, removal attack and offline dataset honours its contract (the
conformance kit, ``arena.testing``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena.errors import InvalidParameters
from arena.models import ARCHITECTURES, build_model
from arena.removal import REMOVALS
from arena.testing import ArchitectureConformance, DatasetConformance, RemovalConformance

VICTIMS_ONLY = {"decision_tree", "zoo"}
"""architectures that are never built untrained (fitted by scikit-learn, or made of members)"""
ARCHS = [name for name in ARCHITECTURES.names() if name not in VICTIMS_ONLY]
ARCH_CASES = [(n, p) for n in ARCHS for p in ArchitectureConformance.PROPERTIES]
REMOVAL_CASES = [(n, p) for n in REMOVALS.names() for p in RemovalConformance.PROPERTIES]


@pytest.mark.parametrize(("name", "prop"), ARCH_CASES, ids=[f"{n}-{p}" for n, p in ARCH_CASES])
def test_architecture_conforms(name: str, prop: str) -> None:
    ArchitectureConformance(name).check([prop])


@pytest.mark.parametrize("name", sorted(VICTIMS_ONLY))
def test_victim_only_architectures_refuse_to_build_with_the_fix(name: str) -> None:
    with pytest.raises(InvalidParameters, match=r"mlp|lenet5"):
        build_model(name, (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("name", "prop"), REMOVAL_CASES, ids=[f"{n}-{p}" for n, p in REMOVAL_CASES]
)
def test_removal_conforms(name: str, prop: str) -> None:
    RemovalConformance(name).check([prop])


@pytest.mark.parametrize("prop", DatasetConformance.PROPERTIES)
def test_digits_conforms(prop: str, tmp_path: Path) -> None:
    DatasetConformance("digits", tmp_path).check([prop])
