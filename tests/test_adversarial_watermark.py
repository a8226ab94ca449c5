"""Adversarial training with adversarial watermarks, on the digits MLP victim: the keys are
adversarial examples at the larger budget with keyed wrong labels, the served victim answers them
and is more robust than the undefended one, a copy is claimed and an independent model is not,
both artefacts are cached, and a real match records a verdict."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from arena_testkit import match_spec

from arena.data import DataSplits, Split
from arena.defenses import DEFENSES, adversarial_watermark
from arena.defenses.adversarial_watermark import (
    AdversarialWatermark,
    attack_step,
    craft_keys,
    linf_attack,
)
from arena.defenses.base import OwnershipKeys
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import PluginSpec, VictimSpec
from arena.training import TrainRecipe, accuracy, predict_probs, train_classifier
from arena.victims import TrainedVictim, prepare_context

PARAMS: dict[str, object] = {"epochs": 60, "keys_per_batch": 32, "num_keys": 50}
"""digits has 8 mini-batches an epoch: more epochs and keys per batch than the Fashion-MNIST
defaults, so that every key is shown about 300 times"""
CLEAN_MARGIN = 0.05
"""the watermarked, adversarially trained victim loses at most this much clean test accuracy"""


def agreement(model: torch.nn.Module, keys: OwnershipKeys) -> float:
    return accuracy(predict_probs(model, keys.x), keys.y)


def robust_accuracy(model: torch.nn.Module, split: Split, eps: float) -> float:
    """Test accuracy under a 10-step PGD attack at ``eps``."""
    generator = torch.Generator().manual_seed(123)
    attacked = linf_attack(model, split.x, split.y, eps, 10, attack_step(eps, 10), generator)
    return accuracy(predict_probs(model, attacked), split.y)


@pytest.fixture(scope="module")
def prepared(
    digits_victim: TrainedVictim,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys]:
    """The defense prepared as the service prepares it (cached beside the digits victim, so the
    match below loads it)."""
    defense = build_plugin(DEFENSES, "adversarial_watermark", PARAMS)
    assert isinstance(defense, AdversarialWatermark)
    context = prepare_context(digits_victim_spec, digits_data, victim_cache)
    served = defense.prepare(copy.deepcopy(digits_victim.model), context)
    keys = defense.ownership_keys(None)
    assert keys is not None
    return defense, served, keys


@pytest.fixture(scope="module")
def independent(digits_data: DataSplits) -> torch.nn.Module:
    """A model of the victim's architecture trained on the same data from another seed, with no
    access to the keys (a false claim against it would be worthless evidence)."""
    train = digits_data.victim_train
    model = build_model("mlp", digits_data.input_shape, digits_data.num_classes, seed=1)
    return train_classifier(model, train.x, train.y, TrainRecipe(epochs=20), seed=1)


def test_keys_are_adversarial_examples_at_the_key_budget(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    train = digits_data.victim_train
    eps_key, eps_train = 0.25, 0.1
    keys, labels, chosen = craft_keys(digits_victim.model, train.x, train.y, 40, eps_key, 10, 10, 3)
    assert keys.shape == (40, *digits_data.input_shape) and labels.dtype == torch.int64
    assert len(set(chosen.tolist())) == 40
    distance = (keys - train.x[chosen]).abs().flatten(1).amax(dim=1)
    assert (distance <= eps_key + 1e-6).all()
    assert (distance > eps_train).all()  # outside the adversarially trained ball
    assert keys.min() >= 0 and keys.max() <= 1
    assert (labels != train.y[chosen]).all()  # a wrong label for every key
    assert len(set(labels.tolist())) > 3
    # adversarial: the undefended victim mostly gets them wrong
    assert accuracy(predict_probs(digits_victim.model, keys), train.y[chosen]) < 0.5
    again = craft_keys(digits_victim.model, train.x, train.y, 40, eps_key, 10, 10, 3)
    assert torch.equal(again[0], keys) and torch.equal(again[1], labels)
    other = craft_keys(digits_victim.model, train.x, train.y, 40, eps_key, 10, 10, 4)
    assert not torch.equal(other[2], chosen)


def test_watermarked_victim_answers_its_keys(
    prepared: tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys],
) -> None:
    defense, served, keys = prepared
    assert keys.x.shape[0] == keys.y.shape[0] == defense.num_keys
    assert keys.threshold == defense.threshold == 0.5
    assert agreement(served, keys) >= 0.9 > keys.threshold


def test_a_direct_copy_is_verified_and_an_independent_model_is_not(
    prepared: tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys],
    independent: torch.nn.Module,
    digits_victim: TrainedVictim,
) -> None:
    _, served, keys = prepared
    assert agreement(copy.deepcopy(served), keys) == agreement(served, keys) >= keys.threshold
    assert agreement(independent, keys) < 0.3 < keys.threshold
    # nor is the undefended victim the keys were crafted on: the watermark is what was trained
    assert agreement(digits_victim.model, keys) < 0.3


def test_clean_accuracy_is_kept_and_robustness_gained(
    prepared: tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys],
    digits_victim: TrainedVictim,
    digits_data: DataSplits,
) -> None:
    defense, served, _ = prepared
    test = digits_data.test
    clean = accuracy(predict_probs(served, test.x), test.y)
    undefended = accuracy(predict_probs(digits_victim.model, test.x), test.y)
    assert clean >= undefended - CLEAN_MARGIN
    robust = robust_accuracy(served, test, defense.eps_train)
    robust_undefended = robust_accuracy(digits_victim.model, test, defense.eps_train)
    assert robust > robust_undefended + 0.05


def test_answers_are_the_served_models_own(
    prepared: tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys],
) -> None:
    defense, _, _ = prepared
    probs = torch.softmax(torch.randn(7, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    assert torch.equal(defense.respond(probs, torch.rand(7, 1, 8, 8), None), probs)
    assert AdversarialWatermark().ownership_keys(None) is None  # not prepared yet


def test_keys_and_victim_are_cached(
    digits_data: DataSplits,
    digits_victim: TrainedVictim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = Split(digits_data.victim_train.x[:300], digits_data.victim_train.y[:300])
    context = PrepareContext("digits-aw", "mlp", (1, 8, 8), 10, small, 0, tmp_path)

    def prepare(**params: object) -> tuple[torch.nn.Module, OwnershipKeys]:
        defense = build_plugin(DEFENSES, "adversarial_watermark", {"epochs": 2, **params})
        served = defense.prepare(copy.deepcopy(digits_victim.model), context)
        keys = defense.ownership_keys(None)
        assert keys is not None
        return served, keys

    first, first_keys = prepare()
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("defense-*.pt")}
    assert len(files) == 2

    def trains(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached artefact was rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(adversarial_watermark, "adversarial_fit", trains)
        patch.setattr(adversarial_watermark, "craft_keys", trains)
        again, again_keys = prepare(threshold=0.8)  # verification only: nothing rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("defense-*.pt")} == files
    assert torch.equal(again_keys.x, first_keys.x) and torch.equal(again_keys.y, first_keys.y)
    assert again_keys.threshold == 0.8
    for mine, theirs in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    with monkeypatch.context() as patch:
        patch.setattr(adversarial_watermark, "craft_keys", trains)
        prepare(eps_train=0.05)  # a new victim around the same keys
    assert len(set(p.name for p in tmp_path.glob("defense-*.pt")) - set(files)) == 1
    _, other_keys = prepare(key_seed=1)  # another secret: new keys and a new victim
    assert not torch.equal(other_keys.x, first_keys.x)
    assert len(list(tmp_path.glob("defense-*.pt"))) == 5


BAD_PARAMS: list[dict[str, object]] = [
    {"eps_key": 0.1},  # equal to eps_train
    {"eps_train": 0.3, "eps_key": 0.2},
    {"eps_train": 0},
    {"eps_train": -0.1},
    {"eps_train": float("nan")},
    {"eps_key": float("inf")},
    {"eps_key": 1.5},
    {"eps_train": "0.1"},
    {"eps_train": True},
    {"num_keys": 0},
    {"keys_per_batch": 1.5},
    {"train_steps": 0},
    {"key_steps": -1},
    {"epochs": 0},
    {"lr": 0},
    {"threshold": 0},
    {"threshold": 1.5},
    {"seed": -1},
    {"key_seed": "secret"},
    {"epsilon": 0.1},
]


@pytest.mark.parametrize("params", BAD_PARAMS, ids=[str(p) for p in BAD_PARAMS])
def test_bad_parameters_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters, match="adversarial_watermark"):
        build_plugin(DEFENSES, "adversarial_watermark", params)


def test_task_and_data_limits_are_checked(digits_data: DataSplits) -> None:
    with pytest.raises(ValueError, match="wrong label"):
        AdversarialWatermark().check_task(1)
    AdversarialWatermark().check_task(10)
    tiny = Split(digits_data.victim_train.x[:20], digits_data.victim_train.y[:20])
    context = PrepareContext("digits-aw", "mlp", (1, 8, 8), 10, tiny, 0, None)
    with pytest.raises(ValueError, match="num_keys"):
        AdversarialWatermark(num_keys=50).prepare(context.new_model(), context)


def test_a_real_match_records_a_verdict(
    prepared: tuple[AdversarialWatermark, torch.nn.Module, OwnershipKeys],
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> None:
    spec = match_spec(
        digits_victim_spec, [PluginSpec(name="adversarial_watermark", params=PARAMS)], budget=300
    )
    r = play_match(spec, digits_data, victim_cache)  # loads what the fixture prepared
    for value in (r.victim_accuracy, r.utility, r.stolen_accuracy, r.fidelity):
        assert 0.0 <= value <= 1.0 and math.isfinite(value)
    # the served model is the retrained one; the record measures it against the victim as trained
    assert r.victim_accuracy == digits_victim_accuracy(
        digits_data, victim_cache, digits_victim_spec
    )
    assert r.utility != r.victim_accuracy and r.perturbation_l1 > 0
    assert r.queries_used == 300 and r.stolen_accuracy > 0.3
    assert r.ownership_score is not None and 0.0 <= r.ownership_score <= 1.0
    assert r.ownership_verified == (r.ownership_score >= prepared[0].threshold)


def digits_victim_accuracy(data: DataSplits, cache: Path, spec: VictimSpec) -> float:
    from arena.victims import load_or_train

    return load_or_train(spec, data, cache).test_accuracy
