"""The ``distill`` removal and the privileged threat models (dataset inference's *model access* and
*data access*): what they steal, what they spend, that only they get the victim's weights or
training split, and that they are never a defense's strongest API adversary."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import ServiceFactory, match_spec, pool_knowledge, record
from torch import nn

import agents  # noqa: F401  (registers the attacks)
from arena.attacker import ATTACKS, MissingKnowledge
from arena.data import DataSplits
from arena.defenses.chain import build_chain
from arena.errors import InvalidParameters
from arena.knowledge import API, DATA_ACCESS, MODEL_ACCESS, Knowledge
from arena.match_data import MatchData
from arena.metrics import agreement
from arena.oracle import InputSpec, Oracle
from arena.record import MatchResult
from arena.referee import grant_knowledge, play_match
from arena.registry import build_plugin
from arena.removal import REMOVALS
from arena.service import VictimService
from arena.specs import VictimSpec
from arena.strongest import strongest, threats
from arena.training import predict_probs
from arena.victims import TrainedVictim
from orchestration.config import parse_config
from orchestration.leaderboard import build_leaderboard, markdown_table

PRIVILEGED = {"model_access": MODEL_ACCESS, "data_access": DATA_ACCESS}


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ---- the distill removal ------------------------------------------------------------------


def test_distill_returns_a_fresh_model_that_agrees_with_the_stolen_one(
    digits_data: DataSplits, digits_victim: TrainedVictim
) -> None:
    stolen = digits_victim.model
    before = weights(stolen).clone()
    remover = build_plugin(REMOVALS, "distill", {"epochs": 30})
    distilled = remover.apply(stolen, pool_knowledge(digits_data), np.random.default_rng(0))
    assert distilled is not stolen and not distilled.training
    assert torch.equal(weights(stolen), before)  # the stolen model is left alone
    assert not torch.allclose(weights(distilled), before)  # none of its weights carried over
    test_x = digits_data.test.x
    agree = agreement(predict_probs(distilled, test_x), predict_probs(stolen, test_x))
    print(f"distill: agreement with the stolen model on the test set {agree:.3f}")
    assert agree > 0.85


def test_distill_leaves_a_data_free_thiefs_model_as_it_is(digits_victim: TrainedVictim) -> None:
    knowledge = Knowledge(None, "none", (1, 8, 8), 10, "mlp")
    out = build_plugin(REMOVALS, "distill", {}).apply(
        digits_victim.model, knowledge, np.random.default_rng(0)
    )
    assert out is digits_victim.model


@pytest.mark.parametrize(
    "params", [{"epochs": 0}, {"lr": 0}, {"images": 0}, {"temperature": 2}], ids=str
)
def test_distill_rejects_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(REMOVALS, "distill", params)


# ---- model access -------------------------------------------------------------------------


@pytest.mark.parametrize("obfuscation", ["fine_tune", "distill"])
def test_model_access_reaches_the_victim_without_a_query(
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim_spec: VictimSpec,
    obfuscation: str,
) -> None:
    params = {"obfuscation": obfuscation, "epochs": 5 if obfuscation == "fine_tune" else 50}
    spec = match_spec(digits_victim_spec, ["none"], "model_access", params, budget=300)
    record = play_match(spec, digits_data, victim_cache)
    print(
        f"model_access {obfuscation}: stolen {record.stolen_accuracy:.3f}, victim "
        f"{record.victim_accuracy:.3f}, fidelity {record.fidelity:.3f}"
    )
    assert record.queries_used == 0 and record.audit_queries == 0
    assert record.threat_model == MODEL_ACCESS and not record.upper_bound
    assert record.stolen_accuracy >= record.victim_accuracy - 0.05
    assert record.fidelity > 0.9


def test_model_access_obfuscation_moves_the_weights(
    digits_data: DataSplits, digits_victim: TrainedVictim
) -> None:
    """Fine-tuning changes the copy's weights; distilling starts from fresh ones."""
    for obfuscation in ("fine_tune", "distill"):
        attacker = build_plugin(ATTACKS, "model_access", {"obfuscation": obfuscation})
        copied = copy.deepcopy(digits_victim.model)
        granted = replace(pool_knowledge(digits_data), victim_copy=copied)
        service = VictimService(digits_victim.model, build_chain([]), InputSpec((1, 8, 8)), 10)
        service.open_account("thief", 10)
        model = attacker.steal(Oracle(service, "thief"), granted, np.random.default_rng(0))
        assert not torch.allclose(weights(model), weights(digits_victim.model))
        assert service.account_stats("thief").used == 0


def test_the_copy_is_the_served_model_not_the_trained_one(digits_victim: TrainedVictim) -> None:
    """A training-time defense (e.g. the adversarial watermark) serves another model: the
    model-access thief gets that one, as a copy it cannot use to change the service."""
    trained = digits_victim.model
    served = copy.deepcopy(trained)
    with torch.no_grad():
        next(served.parameters()).add_(0.5)
    service = VictimService(served, build_chain([]), InputSpec(shape=(1, 8, 8)), 10, "cpu", trained)
    got = service.served_copy()
    assert got is not served and not got.training
    assert torch.equal(weights(got), weights(served))
    assert not torch.equal(weights(got), weights(trained))


# ---- data access --------------------------------------------------------------------------


def test_data_access_scratch_trains_on_the_victim_split_without_a_query(
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim_spec: VictimSpec,
    make_service: ServiceFactory,
) -> None:
    granted = MatchData.from_splits(digits_data, "none", threat_model=DATA_ACCESS)
    knowledge = granted.knowledge("mlp", upper_bound=False, threat_model=DATA_ACCESS)
    attacker = build_plugin(ATTACKS, "data_access", {"epochs": 30})
    assert knowledge.victim_train is not None
    service = make_service()
    service.open_account("thief", 100)
    attacker.steal(Oracle(service, "thief"), knowledge, np.random.default_rng(0))
    assert service.account_stats("thief").used == 0
    assert torch.equal(knowledge.fits[-1].x, digits_data.victim_train.x)
    assert torch.equal(knowledge.fits[-1].targets, digits_data.victim_train.y)

    spec = match_spec(digits_victim_spec, ["none"], "data_access", {"epochs": 30}, budget=300)
    record = play_match(spec.model_copy(update={"pool": "none"}), digits_data, victim_cache)
    print(
        f"data_access scratch: stolen {record.stolen_accuracy:.3f}, victim "
        f"{record.victim_accuracy:.3f}, fidelity {record.fidelity:.3f}"
    )
    assert record.queries_used == 0 and record.threat_model == DATA_ACCESS
    assert record.stolen_accuracy >= record.victim_accuracy - 0.05


def test_data_access_distill_spends_the_budget_on_the_victim_split(
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim_spec: VictimSpec,
) -> None:
    params = {"mode": "distill", "epochs": 30}
    spec = match_spec(digits_victim_spec, ["none"], "data_access", params, budget=300)
    record = play_match(spec.model_copy(update={"pool": "none"}), digits_data, victim_cache)
    print(f"data_access distill @300: stolen {record.stolen_accuracy:.3f}")
    assert record.queries_used == record.audit_queries == 300
    assert record.stolen_accuracy > 0.8


# ---- who is granted what ------------------------------------------------------------------


def test_privileged_knowledge_goes_only_to_the_attack_that_declares_it(
    digits_data: DataSplits, make_service: ServiceFactory, digits_victim_spec: VictimSpec
) -> None:
    service = make_service()
    for name in ATTACKS.names():
        kind = ATTACKS.get(name)
        if kind.victim_kind == VictimSpec.ZOO_ARCH:
            continue  # zoo thieves: their defaults need a zoo; the grant rule is the same
        attacker = build_plugin(ATTACKS, name, {})
        data = MatchData.from_splits(digits_data, threat_model=kind.threat_model)
        spec = match_spec(digits_victim_spec, ["none"], name)
        knowledge = grant_knowledge(spec, data, attacker, None, service)
        assert (knowledge.victim_copy is not None) == (name == "model_access"), name
        assert (knowledge.victim_train is not None) == (name == "data_access"), name
        assert kind.threat_model == PRIVILEGED.get(name, API)
    plain = MatchData.from_splits(digits_data)
    assert plain.victim_train is None  # other matches' data never carries the split


def test_without_the_grant_privileged_attacks_raise_missing_knowledge(
    digits_data: DataSplits, make_service: ServiceFactory
) -> None:
    service = make_service()
    service.open_account("thief", 100)
    oracle, knowledge = Oracle(service, "thief"), pool_knowledge(digits_data)
    for name, params in [("model_access", {}), ("data_access", {"mode": "distill"})]:
        attacker = build_plugin(ATTACKS, name, params)
        with pytest.raises(MissingKnowledge, match="threat_model"):
            attacker.steal(oracle, knowledge, np.random.default_rng(0))
    assert service.account_stats("thief").used == 0


# ---- never the strongest adversary ----------------------------------------------------------


def result(attack: str, stolen: float, threat_model: str = API, **extra: Any) -> MatchResult:
    key = f"{attack}-{threat_model}-{extra.get('pool', 'in_distribution')}"
    return record("none", attack, 300, stolen, match_key=key, threat_model=threat_model, **extra)


PLAYED = [
    result("knockoff", 0.80),
    result("model_access", 0.95, MODEL_ACCESS),
    result("data_access", 0.93, DATA_ACCESS, pool="none", queries_used=0),
]


def test_the_strongest_adversary_ignores_privileged_threat_models() -> None:
    assert strongest(threats(PLAYED)).attack == "knockoff"
    assert [t.attack for t in threats(PLAYED, per_match=True)] == ["knockoff"]
    only = strongest(threats(PLAYED[1:]))  # nothing else played: reported, as the bound is
    assert only.attack == "model_access"


def test_the_leaderboard_shows_privileged_threat_models_beside_the_strongest() -> None:
    (row,) = build_leaderboard(PLAYED)
    assert row.strongest_attack == "knockoff" and row.protection == pytest.approx(0.2)
    assert row.privileged_accuracy == {"data_access": 0.93, "model_access": 0.95}
    table = markdown_table([row])
    assert "privileged threat models" in table and "model_access 0.9500" in table
    (alone,) = build_leaderboard(PLAYED[1:])
    assert alone.strongest_attack == "model_access [model_access]"


def test_a_tournament_config_plays_them_with_their_pools() -> None:
    config = parse_config(
        {
            "name": "threat-models",
            "victims": [{"dataset": "digits", "arch": "mlp", "epochs": 20}],
            "defenses": ["none", "dawn"],
            "attacks": [
                "knockoff",
                {"name": "model_access", "params": {"obfuscation": "distill"}},
                {"name": "data_access", "params": {"mode": "scratch"}},
            ],
            "budgets": [100],
            "removals": ["none", "distill"],
        }
    )
    pools = {(m.attack.name, m.pool) for m in config.matches()}
    assert pools == {
        ("knockoff", "in_distribution"),
        ("model_access", "in_distribution"),
        ("data_access", "none"),
    }
    assert {m.removal.name for m in config.matches() if m.removal is not None} == {"distill"}
