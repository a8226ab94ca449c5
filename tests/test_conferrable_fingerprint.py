"""The conferrable-adversarial-example fingerprint (Lukas et al., ICLR 2021) on digits: it claims
a model distilled from the victim and not independently trained ones, builds deterministically,
loads from its cache, refuses bad parameters; and a suspect that cannot be run is a typed
failure, one with non-finite outputs agrees on no key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from arena_testkit import match_spec
from torch import nn

import arena.defenses.conferrable_fingerprint as module
from arena.data import DataSplits, Split
from arena.defenses import DEFENSES
from arena.defenses.base import OwnershipKeys
from arena.defenses.conferrable_fingerprint import ConferrableFingerprint
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.ownership import verify_ownership
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import PluginSpec, VictimSpec
from arena.training import TrainRecipe, predict_probs, train_classifier
from arena.victims import TrainedVictim, load_or_train, prepare_context

DIGITS = {
    "epochs": 20,
    "surrogates": 4,
    "references": 4,
    "calibration_references": 3,
    "candidates": 500,
    "size": 50,
    "steps": 50,
}
"""digits settings: 8 mini-batches an epoch, so the ensembles need 20 epochs to be trained
like the victim; fewer models and steps than the defaults keep the build to seconds"""
SMALL = {"epochs": 2, "surrogates": 1, "references": 1, "calibration_references": 1,
         "candidates": 40, "size": 10, "steps": 5}  # fmt: skip
"""a fingerprint built in well under a second (determinism, failures)"""


@pytest.fixture(scope="module")
def fingerprint(
    digits_victim: TrainedVictim,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> ConferrableFingerprint:
    """The digits fingerprint, built once into the session's victim cache (where the match
    below finds it)."""
    defense = build_plugin(DEFENSES, "conferrable_fingerprint", DIGITS)
    context = prepare_context(digits_victim_spec, digits_data, victim_cache)
    assert defense.prepare(digits_victim.model, context) is digits_victim.model
    assert isinstance(defense, ConferrableFingerprint)
    return defense


def keys_of(defense: ConferrableFingerprint) -> OwnershipKeys:
    keys = defense.ownership_keys(None)
    assert keys is not None
    return keys


def distilled(data: DataSplits, victim: nn.Module, seed: int) -> nn.Module:
    """A thief's copy: a fresh MLP trained on the victim's probabilities on the attacker pool."""
    pool = data.attacker_pool.x
    model = build_model("mlp", data.input_shape, data.num_classes, seed)
    recipe = TrainRecipe(epochs=30, lr=3e-3, batch_size=64)
    return train_classifier(model, pool, predict_probs(victim, pool), recipe, seed=seed)


def test_claims_a_distilled_copy_and_refuses_independent_models(
    fingerprint: ConferrableFingerprint,
    digits_victim: TrainedVictim,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> None:
    """Soft-label copies inherit the victim's labels on the fingerprint; models trained on the
    true labels (other seeds, another architecture) do not, and stay below the threshold
    calibrated on the held-out references."""
    keys = keys_of(fingerprint)
    assert len(keys.y) == DIGITS["size"]
    assert 0 < keys.threshold <= 1
    assert keys.judge(digits_victim.model).score == 1.0  # the victim's own labels
    for seed in (100, 101):
        verdict = keys.judge(distilled(digits_data, digits_victim.model, seed))
        assert verdict.verified and verdict.score >= keys.threshold, (seed, verdict)
    independent = [digits_victim_spec.model_copy(update={"seed": seed}) for seed in (1, 2, 3)] + [
        VictimSpec(dataset="digits", arch="softmax_regression", epochs=20)
    ]
    for spec in independent:
        model = load_or_train(spec, digits_data, victim_cache).model
        verdict = keys.judge(model)
        assert not verdict.verified, (spec.arch, spec.seed, verdict)


def small_context(data: DataSplits, cache_dir: Path | None = None) -> PrepareContext:
    train = Split(data.victim_train.x[:300], data.victim_train.y[:300])
    return PrepareContext("digits-small", "mlp", data.input_shape, 10, train, 0, cache_dir)


def test_builds_deterministically_under_its_seeds(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    built = []
    for key_seed in (0, 0, 1):
        defense = ConferrableFingerprint(**SMALL, key_seed=key_seed)
        defense.prepare(digits_victim.model, small_context(digits_data))
        built.append(keys_of(defense))
    first, again, other = built
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert first.threshold == again.threshold
    assert not torch.equal(first.x, other.x)


def test_a_second_prepare_loads_the_fingerprint_and_trains_nothing(
    fingerprint: ConferrableFingerprint,
    digits_victim: TrainedVictim,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_training(*args: Any, **kwargs: Any) -> nn.Module:
        raise AssertionError("the cached fingerprint was rebuilt")

    monkeypatch.setattr(module, "train_classifier", no_training)
    again = ConferrableFingerprint(**DIGITS, threshold=0.9)
    context = prepare_context(digits_victim_spec, digits_data, victim_cache)
    again.prepare(digits_victim.model, context)
    first, loaded = keys_of(fingerprint), keys_of(again)
    assert torch.equal(first.x, loaded.x) and torch.equal(first.y, loaded.y)
    assert loaded.threshold == 0.9  # a fixed threshold only changes verification


@pytest.mark.parametrize(
    "params",
    [
        {"surrogates": 0},
        {"references": 1.5},
        {"calibration_references": True},
        {"size": 600, "candidates": 500},
        {"eps": 0},
        {"eps": 1.5},
        {"eps": float("nan")},
        {"dropout": 1.0},
        {"margin": -0.1},
        {"threshold": 0},
        {"alpha": -1},
        {"architectures": "mlp"},
        {"architectures": ["mlp", ""]},
        {"key_seed": -1},
        {"no_such_parameter": 1},
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, "conferrable_fingerprint", params)


def test_a_config_list_of_architectures_becomes_a_tuple(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    defense = build_plugin(
        DEFENSES,
        "conferrable_fingerprint",
        {**SMALL, "architectures": ["mlp", "softmax_regression"]},
    )
    assert isinstance(defense, ConferrableFingerprint)
    assert defense.architectures == ("mlp", "softmax_regression")
    defense.prepare(digits_victim.model, small_context(digits_data))
    assert defense.ownership_keys(None) is not None


class NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 10), float("nan"))


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the thief's model is broken")


class OneEvidence:
    """A service stand-in that holds one piece of evidence at chain position 0."""

    def __init__(self, evidence: OwnershipKeys) -> None:
        self.evidence = evidence

    def ownership_keys(self, identity: str) -> list[tuple[int, OwnershipKeys]]:
        return [(0, self.evidence)]


def test_a_suspect_with_non_finite_outputs_agrees_on_no_key(
    fingerprint: ConferrableFingerprint,
) -> None:
    keys = keys_of(fingerprint)
    # label 0 everywhere: a NaN row's argmax would match every key without the finite check
    zeros = OwnershipKeys(keys.x, torch.zeros_like(keys.y), 0.5)
    for evidence in (keys, zeros):
        verdict = evidence.judge(NaNModel())
        assert verdict.score == 0.0 and not verdict.verified


def test_a_suspect_that_raises_is_a_typed_failure(
    fingerprint: ConferrableFingerprint, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, [PluginSpec(name="conferrable_fingerprint")])
    service: Any = OneEvidence(keys_of(fingerprint))
    [verdict] = verify_ownership(Broken(), spec, service, ["thief"])
    assert verdict["verified"] is False and verdict["score"] == 0.0
    assert re.search(r"conferrable_fingerprint.*broken", verdict["failure"])


def test_a_match_records_the_fingerprint_verdict(
    fingerprint: ConferrableFingerprint,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> None:
    """Through the referee: the service prepares the defense (loading the fingerprint built
    above) and judges the stolen model on it."""
    defense = PluginSpec(name="conferrable_fingerprint", params=DIGITS)
    spec = match_spec(digits_victim_spec, [defense], "knockoff", {"epochs": 5}, budget=300)
    record = play_match(spec, digits_data, victim_cache)
    [verdict] = json.loads(record.ownership)
    assert verdict["verifier"] == "conferrable_fingerprint"
    assert verdict["keys"] == DIGITS["size"]
    assert verdict["threshold"] == keys_of(fingerprint).threshold
    assert record.ownership_verified == verdict["verified"]
