"""Dataset inference (Maini et al., ICLR 2021): a suspect whose margins tell the victim's
training points from public ones is claimed; models trained on other data are not.

The digits victims here are MLPs fitted to 300 training images until they fit them all (a
small owner's dataset the model has learnt by heart, as the paper's CIFAR models have): on the
arena's 20-epoch digits victim, which generalises almost as well as it fits, the private/public
margin gap is too small for 100 samples (see the docs). MinGD (white box) separates them; the
blind walk is checked for determinism, guards and the match path.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import match_spec
from torch import nn

from arena.data import DataSplits, Split
from arena.defenses import DEFENSES
from arena.defenses.dataset_inference import (
    DatasetInference,
    DatasetInferenceEvidence,
    one_sided_welch,
)
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters, VerificationFailed
from arena.models import build_model
from arena.ownership import verify_ownership
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import PluginSpec, VictimSpec
from arena.training import TrainRecipe, train_classifier
from arena.victims import prepare_context

OWN = 300
"""the owner's training images (the first of digits' victim split)"""
RECIPE = TrainRecipe(epochs=100, lr=3e-3, batch_size=64)
MIN_GD = {"features": "min_gd", "gd_steps": 200, "train_samples": 150, "samples": 100}


def mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    return train_classifier(build_model("mlp", (1, 8, 8), 10, seed), x, y, RECIPE, seed)


def owned(digits_data: DataSplits) -> Split:
    train = digits_data.victim_train
    return Split(train.x[:OWN], train.y[:OWN])


def context(digits_data: DataSplits, public: Split | None) -> PrepareContext:
    return PrepareContext("digits-own", "mlp", (1, 8, 8), 10, owned(digits_data), public=public)


@pytest.fixture(scope="module")
def models(digits_data: DataSplits) -> dict[str, nn.Module]:
    """The owner's victim, a model trained on the same data (another seed) and one trained on
    the disjoint attacker pool, all with true labels."""
    own, pool = owned(digits_data), digits_data.attacker_pool
    return {
        "victim": mlp(own.x, own.y, 0),
        "same_data": mlp(own.x, own.y, 1),
        "disjoint": mlp(pool.x, pool.y, 2),
    }


@pytest.fixture(scope="module")
def min_gd_evidence(
    digits_data: DataSplits, models: dict[str, nn.Module]
) -> DatasetInferenceEvidence:
    defense = DatasetInference(**MIN_GD)
    assert (
        defense.prepare(models["victim"], context(digits_data, digits_data.test))
        is (models["victim"])
    )
    evidence = defense.ownership_keys(None)
    assert evidence is not None
    return evidence


def test_min_gd_claims_the_victim_and_a_model_trained_on_its_data_not_a_disjoint_one(
    min_gd_evidence: DatasetInferenceEvidence, models: dict[str, nn.Module]
) -> None:
    verdicts = {name: min_gd_evidence.judge(model) for name, model in models.items()}
    for name in ("victim", "same_data"):
        judged = verdicts[name]
        assert judged.p_value is not None and judged.p_value < 0.01, (name, judged)
        assert judged.verified and judged.score == 1 - judged.p_value
        assert judged.threshold == pytest.approx(0.99) and judged.keys == 200
    disjoint = verdicts["disjoint"]
    assert disjoint.p_value is not None and disjoint.p_value > 0.1, disjoint
    assert not disjoint.verified


class Detached(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).detach()


def test_min_gd_on_a_suspect_without_gradients_is_a_verification_failure(
    min_gd_evidence: DatasetInferenceEvidence, models: dict[str, nn.Module]
) -> None:
    with pytest.raises(VerificationFailed, match="margins could not be measured"):
        min_gd_evidence.judge(Detached(models["victim"]))


def test_evidence_pickles_and_judges_the_same_after(
    min_gd_evidence: DatasetInferenceEvidence, models: dict[str, nn.Module]
) -> None:
    """Evidence travels from the service to the referee (it pickles)."""
    copy = pickle.loads(pickle.dumps(min_gd_evidence))
    assert isinstance(copy, DatasetInferenceEvidence)
    assert torch.equal(copy.private.x, min_gd_evidence.private.x)


def test_blind_walk_is_deterministic_under_its_seed(
    digits_data: DataSplits, models: dict[str, nn.Module]
) -> None:
    """Same seed: the same points, regressor and p-values; another seed: other points."""
    ctx = context(digits_data, digits_data.test)
    judged = []
    for seed in (0, 0, 1):
        defense = DatasetInference(seed=seed, samples=30, train_samples=60)
        defense.prepare(models["victim"], ctx)
        evidence = defense.ownership_keys(None)
        assert evidence is not None
        judged.append((evidence, evidence.judge(models["disjoint"])))
    (first, a), (second, b), (other, _) = judged
    assert a == b and 0 <= (a.p_value or 0) <= 1
    assert torch.equal(first.private.x, second.private.x)
    assert not torch.equal(first.private.x, other.private.x)


@pytest.mark.parametrize(
    "params",
    [
        {"features": "white_box"},
        {"directions": 0},
        {"step_scale": 0},
        {"max_steps": 1.5},
        {"samples": 0},
        {"train_samples": 1},
        {"alpha": 0},
        {"alpha": 1},
        {"alpha": float("nan")},
        {"seed": -1},
        {"regressor_epochs": "many"},
    ],
)
def test_bad_parameters_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, "dataset_inference", params)


def test_prepare_needs_public_points_and_enough_of_them(
    digits_data: DataSplits, models: dict[str, nn.Module]
) -> None:
    with pytest.raises(ValueError, match="public"):
        DatasetInference().prepare(models["victim"], context(digits_data, None))
    small = Split(digits_data.test.x[:100], digits_data.test.y[:100])
    with pytest.raises(ValueError, match="needs 250 public points"):
        DatasetInference().prepare(models["victim"], context(digits_data, small))
    assert DatasetInference().ownership_keys(None) is None  # not prepared: no evidence


class Raising(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


class NotANumber(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 10), float("nan"))


class FakeService:
    def __init__(self, evidence: DatasetInferenceEvidence) -> None:
        self.evidence = evidence

    def ownership_keys(self, identity: str) -> list[tuple[int, DatasetInferenceEvidence]]:
        return [(0, self.evidence)]


def test_a_suspect_that_raises_or_answers_nan_is_a_verification_failure(
    digits_data: DataSplits, models: dict[str, nn.Module], digits_victim_spec: VictimSpec
) -> None:
    """The suspect is untrusted: its failure is typed, and the referee records it as an
    unverified verdict instead of crashing."""
    defense = DatasetInference(samples=20, train_samples=40)
    defense.prepare(models["victim"], context(digits_data, digits_data.test))
    evidence = defense.ownership_keys(None)
    assert evidence is not None
    for suspect in (Raising(), NotANumber()):
        with pytest.raises(VerificationFailed):
            evidence.judge(suspect)
    spec = match_spec(digits_victim_spec, [PluginSpec(name="dataset_inference")])
    [verdict] = verify_ownership(Raising(), spec, FakeService(evidence), ["thief"])  # type: ignore[arg-type]
    assert verdict["verifier"] == "dataset_inference" and not verdict["verified"]
    assert "boom" in verdict["failure"] and verdict["score"] == 0.0


def test_a_test_without_variance_is_decided_by_its_limit() -> None:
    ones, zeros = np.ones(10), np.zeros(10)
    assert one_sided_welch(ones, zeros) == 0.0
    assert one_sided_welch(zeros, ones) == 1.0
    assert one_sided_welch(ones, ones) == 1.0
    assert 0.0 < one_sided_welch(np.arange(10.0), np.arange(10.0)) < 1.0


def test_a_match_records_the_dataset_inference_verdict(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    defense = PluginSpec(name="dataset_inference", params={"train_samples": 60, "samples": 30})
    spec = match_spec(digits_victim_spec, [defense], "knockoff", {"epochs": 5}, budget=300)
    record = play_match(spec, digits_data, victim_cache)
    [verdict] = json.loads(record.ownership)
    assert verdict["verifier"] == "dataset_inference" and verdict["keys"] == 60
    assert 0 <= verdict["p_value"] <= 1 and verdict["score"] == pytest.approx(
        1 - verdict["p_value"]
    )
    assert record.ownership_verified == verdict["verified"]


def test_private_points_are_the_images_the_victim_was_trained_on(digits_data: DataSplits) -> None:
    """A victim trained on the first ``train_size`` images of its split hands its defenses
    exactly those (dataset inference takes them as private; others train beside the victim)."""
    spec = VictimSpec(dataset="digits", arch="mlp", epochs=1, train_size=123)
    context = prepare_context(spec, digits_data, None)
    assert len(context.train) == 123
    assert torch.equal(context.train.x, digits_data.victim_train.x[:123])
    full = prepare_context(spec.model_copy(update={"train_size": None}), digits_data, None)
    assert len(full.train) == len(digits_data.victim_train)
