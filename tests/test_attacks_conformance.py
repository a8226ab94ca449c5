"""Every registered attack honours the attacker contract (DESIGN §3, checked by the conformance kit
``arena.testing``, the checks plug-in authors run) against in-process oracles; the referee replays
a match bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import ServiceFactory, match_spec, open_oracle
from torch import nn

import agents
from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.errors import UnknownPlugin
from arena.knowledge import Knowledge
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import VictimSpec
from arena.testing import AttackConformance
from arena.testing.attack_arena import AttackArena
from arena.victims import TrainedVictim
from arena.zoo import ZooModule

NAMES = ATTACKS.names()
BUDGET = 200


def small_params(name: str) -> dict[str, Any]:
    """Cheap hyperparameters: a few epochs where the attack (or, for a model-zoo thief, the
    extraction attack it runs) has an ``epochs`` knob."""
    if zoo_thief(name):
        return {"extraction_params": {"epochs": 5}}
    if "round_epochs" in fields(name):  # rounds steer the queries; the final fit starts fresh
        return {"epochs": 30, "round_epochs": 5}
    return {"epochs": 5} if "epochs" in fields(name) else {}


def zoo_thief(name: str) -> bool:
    """Model-zoo thieves send targets, which a single model refuses: they play the digits zoo."""
    return ATTACKS.get(name).victim_kind == VictimSpec.ZOO_ARCH


def fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(ATTACKS.get(name)) if f.init}


def knowledge(data: DataSplits, pool: torch.Tensor | None, labels: bool = False) -> Knowledge:
    """What the referee grants; the pool's labels only to an upper-bound baseline."""
    return Knowledge(
        pool=pool,
        pool_name="in_distribution",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        substitute_arch="mlp",
        pool_labels=data.attacker_pool.y if labels and pool is not None else None,
    )


def test_agents_registers_the_builtin_attacks() -> None:
    assert {"knockoff", "copycat"} <= set(NAMES)
    assert agents.ATTACKS is ATTACKS


@pytest.fixture(scope="module")
def arena(
    digits_data: DataSplits, digits_victim: TrainedVictim, digits_zoo: TrainedVictim
) -> AttackArena:
    """The kit's arena over the session's cached digits victim and zoo (the kit would otherwise
    train the same models again)."""
    assert isinstance(digits_zoo.model, ZooModule)
    return AttackArena(digits_data, digits_victim.model, digits_zoo.model)


SUBJECTS: dict[str, AttackConformance] = {}
CASES = [(name, prop) for name in NAMES for prop in AttackConformance.PROPERTIES]


@pytest.mark.parametrize(("name", "prop"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_attack_conforms(arena: AttackArena, name: str, prop: str) -> None:
    """The kit's contract (arena.testing), one property at a time; the thefts are shared."""
    if name not in SUBJECTS:
        SUBJECTS[name] = AttackConformance(name, small_params(name), arena=arena)
    SUBJECTS[name].check([prop])


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", ["knockoff", "zoo_naive"])
def test_same_match_twice_gives_identical_results(
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim_spec: VictimSpec,
    request: pytest.FixtureRequest,
    name: str,
) -> None:
    victim = request.getfixturevalue("digits_zoo").spec if zoo_thief(name) else digits_victim_spec
    spec = match_spec(victim, ["reverse_sigmoid"], name, small_params(name), BUDGET)
    first = play_match(spec, digits_data, victim_cache)
    second = play_match(spec, digits_data, victim_cache)
    assert first.stolen_accuracy == second.stolen_accuracy
    assert first.fidelity == second.fidelity
    assert first.perturbation_l1 == second.perturbation_l1
    assert first.queries_used == second.queries_used <= BUDGET
    assert first.served_by == second.served_by  # a zoo: the same members answered
    assert first.goodput == second.goodput


def test_unknown_attack_lists_known_names() -> None:
    with pytest.raises(UnknownPlugin) as info:
        build_plugin(ATTACKS, "knockof", {})
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["knockoff", "copycat"])
def test_attack_with_spent_budget_degrades_instead_of_crashing(
    make_service: ServiceFactory, digits_data: DataSplits, name: str
) -> None:
    service = make_service()
    oracle = open_oracle(service, "broke", 0)
    model = build_plugin(ATTACKS, name, {"epochs": 1}).steal(
        oracle, knowledge(digits_data, digits_data.attacker_pool.x), rng(0)
    )
    assert isinstance(model, nn.Module) and not model.training
    assert service.account_stats("broke").used == 0
