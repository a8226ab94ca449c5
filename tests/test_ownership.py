"""Ownership verification on stolen models: the DAWN serving-side watermark, the referee's
verdicts, and the removal attacks a thief applies before its model is checked."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import match_spec, pool_knowledge
from torch import nn

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.defenses.base import key_agreement
from arena.defenses.dawn import Dawn, WatermarkLog
from arena.errors import InvalidParameters
from arena.oracle import Oracle
from arena.ownership import verify_ownership
from arena.referee import play_match
from arena.registry import build_plugin
from arena.removal import REMOVALS, FineTune
from arena.service_factory import build_service
from arena.specs import PluginSpec, VictimSpec
from arena.training import (
    TrainRecipe,
    accuracy,
    predict_probs,
    train_classifier,
    train_until_fitted,
)
from arena.victims import load_or_train
from orchestration.config import ConfigError, parse_config
from orchestration.leaderboard import build_leaderboard, markdown_table

DAWN = PluginSpec(name="dawn", params={"fraction": 0.1})


def probs_for(n: int, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(seed)) * 3
    return torch.softmax(logits, dim=1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- DAWN ---------------------------------------------------------------------------------


def test_dawn_watermarks_a_keyed_fraction_with_a_wrong_label() -> None:
    dawn = Dawn(fraction=0.1)
    probs, x = probs_for(2000), images(2000)
    state = dawn.new_state()
    answered = dawn.respond(probs, x, state)
    changed = (answered != probs).any(dim=1)
    assert 0.07 < float(changed.float().mean()) < 0.13
    assert (answered[changed].argmax(1) != probs[changed].argmax(1)).all()
    assert torch.equal(answered[~changed], probs[~changed])
    # a permutation of the same probabilities: still a distribution, same values
    torch.testing.assert_close(answered.sort(dim=1).values, probs.sort(dim=1).values)
    keys = dawn.ownership_keys(state)
    assert keys is not None and keys.threshold == 0.5
    assert int(keys.y.numel()) == int(changed.sum()) == state.count
    assert torch.equal(keys.y, answered[changed].argmax(1))
    assert torch.equal(keys.x, x[changed])


def test_dawn_decides_per_query_and_keeps_at_most_max_keys() -> None:
    """The same image always gets the same answer, whatever the batch; the log is capped."""
    dawn = Dawn(fraction=0.2, max_keys=25)
    probs, x = probs_for(300), images(300)
    whole = dawn.respond(probs, x, dawn.new_state())
    state = dawn.new_state()
    halves = torch.cat(
        [dawn.respond(probs[:111], x[:111], state), dawn.respond(probs[111:], x[111:], state)]
    )
    assert torch.equal(whole, halves)
    assert state.count == 25
    other_key = Dawn(fraction=0.2, key=7).respond(probs, x, Dawn().new_state())
    assert not torch.equal(other_key, whole)


def test_dawn_without_watermarked_queries_has_no_keys() -> None:
    assert Dawn().ownership_keys(WatermarkLog()) is None
    assert Dawn().ownership_keys(None) is None


@pytest.mark.parametrize(
    "params",
    [
        {"fraction": 0},
        {"fraction": 0.7},
        {"fraction": float("nan")},
        {"threshold": 0},
        {"threshold": 1.5},
        {"max_keys": 0},
        {"key": -1},
        {"fraction": "0.1"},
    ],
)
def test_dawn_refuses_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, "dawn", params)


def memorising_copy(x: torch.Tensor, answers: torch.Tensor, seed: int) -> nn.Module:
    """A thief's model trained long enough on the served answers to reproduce them."""
    torch.manual_seed(seed)  # before the layers: their initial weights come from it
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    recipe = TrainRecipe(epochs=150, lr=3e-3, batch_size=64)
    return train_classifier(model, x, answers.argmax(1), recipe, seed=seed)


def test_verification_claims_a_model_copied_from_the_answers_and_not_an_independent_one(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """DAWN's keys are the wrong labels a thief was served: a model trained to reproduce the
    answers gives them back; models trained on the true labels (other seeds, no access to the
    victim) do not, so they are not falsely claimed."""
    spec = match_spec(digits_victim_spec, [DAWN], budget=400)
    service = build_service(spec.victim, spec.defenses, digits_data, victim_cache)
    service.open_account("thief", 400)
    x = digits_data.attacker_pool.x[:400]
    answers = Oracle(service, "thief").query_all(x)
    copied = memorising_copy(x, answers, seed=0)
    verdict = verify_ownership(copied, spec, service, ["thief"])
    assert len(verdict) == 1 and verdict[0]["verifier"] == "dawn"
    assert verdict[0]["keys"] >= 20
    assert verdict[0]["verified"] and verdict[0]["score"] >= 0.6, verdict
    for seed in (1, 2, 3):
        independent = load_or_train(
            digits_victim_spec.model_copy(update={"seed": seed}), digits_data, victim_cache
        ).model
        [claim] = verify_ownership(independent, spec, service, ["thief"])
        assert not claim["verified"] and claim["score"] < 0.2, (seed, claim)


def digits_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def test_training_until_fitted_stops_at_the_target_and_the_memorised_copy_is_claimed(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """The benchmark's memorising thief: rounds of training until the served answers' top-1 is
    reproduced (wrong ones included); DAWN then claims it. A cap ends a run short of the target,
    its last round cut to fit."""
    spec = match_spec(digits_victim_spec, [DAWN], budget=400)
    service = build_service(spec.victim, spec.defenses, digits_data, victim_cache)
    service.open_account("thief", 400)
    x = digits_data.attacker_pool.x[:400]
    answers = Oracle(service, "thief").query_all(x)
    rounds: list[int] = []
    recipe = TrainRecipe(epochs=25, lr=3e-3, batch_size=64)
    copied, report = train_until_fitted(
        digits_mlp(0), x, answers, recipe, 0, 0.985, 200, lambda _, r: rounds.append(r.epochs)
    )
    assert report.agreement >= 0.985 and report.epochs < 200
    assert rounds == list(range(25, report.epochs + 1, 25))
    assert report.agreement == accuracy(predict_probs(copied, x), answers.argmax(1))
    [verdict] = verify_ownership(copied, spec, service, ["thief"])
    assert verdict["verified"] and verdict["score"] >= 0.9, verdict
    _, capped = train_until_fitted(digits_mlp(0), x, answers, recipe, 0, 1.0, 30)
    assert capped.epochs == 30 and capped.agreement < 0.99


def test_fine_tuning_with_true_labels_uses_the_same_images_as_self_labelled_fine_tuning(
    digits_victim: Any, digits_data: DataSplits
) -> None:
    """``apply`` is ``pick`` then ``tune`` on the model's own labels, so the benchmark's
    true-label variant differs from it only in the labels."""
    tuner = FineTune(images=300, epochs=3)
    knowledge = pool_knowledge(digits_data)
    assert knowledge.pool is not None
    model = digits_victim.model
    applied = tuner.apply(model, knowledge, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    rows = tuner.pick(knowledge.pool, rng)
    x = knowledge.pool[rows]
    assert torch.equal(
        weights(tuner.tune(model, x, predict_probs(model, x).argmax(1), rng)), weights(applied)
    )
    truth = digits_data.attacker_pool.y[rows]
    labelled = tuner.tune(model, x, truth, np.random.default_rng(0))
    assert not torch.equal(weights(labelled), weights(applied))
    test = digits_data.test
    before = accuracy(predict_probs(model, test.x), test.y)
    assert accuracy(predict_probs(labelled, test.x), test.y) > before - 0.05


def test_match_records_the_ownership_verdict(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, [DAWN], "knockoff", {"epochs": 5}, budget=300)
    record = play_match(spec, digits_data, victim_cache)
    [verdict] = json.loads(record.ownership)
    assert record.ownership_verified == verdict["verified"]
    assert record.ownership_score == verdict["score"]
    assert verdict["keys"] > 0 and 0 <= verdict["score"] <= 1
    plain = play_match(
        match_spec(digits_victim_spec, ["none"], "knockoff", {"epochs": 5}, budget=300),
        digits_data,
        victim_cache,
    )
    assert plain.ownership_verified is None and plain.ownership_score is None
    assert plain.ownership == ""
    rows = build_leaderboard([record, plain])
    assert {r.defense: r.ownership_verified for r in rows} == {
        "dawn(fraction=0.1)": int(bool(record.ownership_verified)),
        "none": None,
    }
    assert "ownership verified" in markdown_table(rows)


def test_key_agreement_of_an_empty_key_set_is_zero(digits_victim: Any) -> None:
    assert key_agreement(digits_victim.model, torch.empty(0, 1, 8, 8), torch.empty(0)) == 0.0


# ---- removal attacks ----------------------------------------------------------------------


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Linear)]
    )


@pytest.mark.parametrize("amount", [0.2, 0.6])
def test_pruning_zeroes_the_smallest_weights_of_a_copy(
    digits_victim: Any, digits_data: DataSplits, amount: float
) -> None:
    original = copy.deepcopy(digits_victim.model)
    pruned = build_plugin(REMOVALS, "prune", {"amount": amount}).apply(
        digits_victim.model, pool_knowledge(digits_data), np.random.default_rng(0)
    )
    zeros = float((weights(pruned) == 0).float().mean())
    assert abs(zeros - amount) < 0.01
    kept = weights(pruned) != 0
    assert (
        weights(digits_victim.model)[~kept].abs().max()
        <= weights(digits_victim.model)[kept].abs().min()
    )
    assert torch.equal(weights(digits_victim.model), weights(original))  # the thief's copy only
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())


def test_fine_tuning_moves_the_weights_and_keeps_the_function(
    digits_victim: Any, digits_data: DataSplits
) -> None:
    tuned = build_plugin(REMOVALS, "fine_tune", {"images": 300, "epochs": 3}).apply(
        digits_victim.model, pool_knowledge(digits_data), np.random.default_rng(0)
    )
    assert not torch.equal(weights(tuned), weights(digits_victim.model))
    test = digits_data.test
    before = accuracy(predict_probs(digits_victim.model, test.x), test.y)
    assert accuracy(predict_probs(tuned, test.x), test.y) > before - 0.1


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("prune", {"amount": 1.0}),
        ("prune", {"amount": -0.1}),
        ("prune", {"amount": "half"}),
        ("fine_tune", {"epochs": 0}),
        ("fine_tune", {"lr": 0}),
        ("fine_tune", {"images": 2.5}),
        ("prune", {"rate": 0.2}),
    ],
)
def test_removals_refuse_bad_parameters(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(REMOVALS, name, params)


def test_a_removal_acts_on_the_model_stolen_without_it(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """The theft is the same with or without a removal (common random numbers); the record
    keeps the stolen accuracy before removal and scores the model after it."""
    plain_spec = match_spec(digits_victim_spec, ["none"], "knockoff", {"epochs": 5}, budget=300)
    plain = play_match(plain_spec, digits_data, victim_cache)
    pruned_spec = plain_spec.model_copy(
        update={"removal": PluginSpec(name="prune", params={"amount": 0.6})}
    )
    pruned = play_match(pruned_spec, digits_data, victim_cache)
    assert pruned.match_key != plain.match_key
    assert pruned.stolen_accuracy_before_removal == plain.stolen_accuracy
    assert pruned.queries_used == plain.queries_used
    assert pruned.removal == "prune(amount=0.6)" and plain.removal == "none"
    assert plain.stolen_accuracy_before_removal is None


def tournament(**changes: Any) -> dict[str, Any]:
    return {
        "name": "removals",
        "victims": [{"dataset": "digits", "arch": "mlp", "epochs": 20}],
        "defenses": ["none", "dawn"],
        "attacks": ["knockoff"],
        "budgets": [100],
        **changes,
    }


def test_configs_expand_removals_and_keep_old_keys() -> None:
    plain = parse_config(tournament()).matches()
    assert all(m.removal is None for m in plain)
    config = parse_config(
        tournament(removals=["none", {"name": "prune", "params": {"amount": 0.2}}])
    )
    matches = config.matches()
    assert len(matches) == 2 * len(plain)
    assert {m.key() for m in matches if m.removal is None} == {m.key() for m in plain}
    assert {m.removal.params["amount"] for m in matches if m.removal is not None} == {0.2}


def test_bad_removals_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tournament(removals=[{"name": "prune", "params": {"amount": 2}}, "shred"]))
    paths = [p for p, _ in info.value.problems]
    assert paths == ["removals.0.params", "removals.1.name"]
