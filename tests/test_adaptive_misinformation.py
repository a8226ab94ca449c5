"""Adaptive misinformation: the outlier-exposed victim separates real images from synthetic
outliers, the misinformation model is confidently wrong, the answer blends the two on the victim's
confidence, and both trained models are cached on training parameters only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arena.data import DataSplits, Split
from arena.defenses import DEFENSES
from arena.defenses.adaptive_misinformation import (
    AdaptiveMisinformation,
    misinformation_loss,
    synthetic_outliers,
)
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.registry import build_plugin
from arena.training import accuracy, predict_probs


def digits_context(data: DataSplits, cache: Path | None = None) -> PrepareContext:
    return PrepareContext(
        "digits-am", "mlp", data.input_shape, data.num_classes, data.victim_train, 0, cache
    )


@pytest.fixture(scope="module")
def prepared(digits_data: DataSplits) -> tuple[AdaptiveMisinformation, torch.nn.Module]:
    defense = AdaptiveMisinformation(tau=0.6)
    context = digits_context(digits_data)
    served = defense.prepare(context.new_model(), context)
    return defense, served


def test_outliers_keep_pixel_statistics_but_not_structure() -> None:
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outliers = synthetic_outliers(images, seed=1)
    assert outliers.shape == images.shape
    assert not torch.equal(outliers, images)
    for original, outlier in zip(images, outliers, strict=True):
        # both kinds only move pixels around
        assert torch.equal(original.flatten().sort().values, outlier.flatten().sort().values)
        assert not torch.equal(original, outlier)
    # odd rows move whole 2x2 tiles: each outlier tile is one of the original's tiles
    tiles = images[1].unfold(1, 2, 2).unfold(2, 2, 2).reshape(-1, 4)
    moved = outliers[1].unfold(1, 2, 2).unfold(2, 2, 2).reshape(-1, 4)
    assert sorted(map(tuple, tiles.tolist())) == sorted(map(tuple, moved.tolist()))
    torch.testing.assert_close(synthetic_outliers(images, seed=1), outliers)
    assert not torch.equal(synthetic_outliers(images, seed=2), outliers)


def test_misinformation_loss_is_minus_log_of_the_wrong_mass() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    p_true = torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(misinformation_loss(logits, labels), -(1 - p_true).log().mean())
    certain = torch.zeros(1, 10)
    certain[0, 3] = 200.0  # p_true rounds to one: the naive formula gives inf
    assert torch.isfinite(misinformation_loss(certain, torch.tensor([3])))


def test_exposed_victim_keeps_utility_and_scores_outliers_low(
    prepared: tuple[AdaptiveMisinformation, torch.nn.Module], digits_data: DataSplits
) -> None:
    defense, served = prepared
    test = digits_data.test
    probs = predict_probs(served, test.x)
    assert accuracy(probs, test.y) > 0.85
    outlier_probs = predict_probs(served, synthetic_outliers(test.x, seed=7))
    inlier_conf = probs.max(dim=1).values
    outlier_conf = outlier_probs.max(dim=1).values
    assert inlier_conf.median() > 0.8 > 0.5 > outlier_conf.median()
    wrong = predict_probs(defense.models["misinformation"], test.x)
    assert accuracy(wrong, test.y) < 0.05  # confidently wrong, not merely uninformed
    assert wrong.gather(1, test.y[:, None]).mean() < 0.02


def test_answers_blend_on_the_victims_confidence(
    prepared: tuple[AdaptiveMisinformation, torch.nn.Module], digits_data: DataSplits
) -> None:
    defense, served = prepared
    x = torch.cat([digits_data.test.x[:200], synthetic_outliers(digits_data.test.x[:200], 3)])
    probs = predict_probs(served, x)
    out = defense.respond(probs, x, None)
    wrong = predict_probs(defense.models["misinformation"], x)
    confidence = probs.max(dim=1).values
    sure, unsure = confidence > defense.tau + 0.02, confidence < defense.tau - 0.02
    assert sure.sum() > 100 and unsure.sum() > 50
    torch.testing.assert_close(out[sure], probs[sure], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[unsure], wrong[unsure], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(len(x)))
    # outliers are mostly misinformed, real images mostly answered truthfully
    assert unsure[200:].float().mean() > 0.5 > unsure[:200].float().mean()


def test_models_are_cached_on_training_parameters_only(
    digits_data: DataSplits, tmp_path: Path
) -> None:
    small = Split(digits_data.victim_train.x[:200], digits_data.victim_train.y[:200])
    context = PrepareContext("digits-am", "mlp", (1, 8, 8), 10, small, 0, tmp_path)

    def prepare(**params: object) -> torch.nn.Module:
        defense = build_plugin(DEFENSES, "adaptive_misinformation", {"epochs": 2, **params})
        return defense.prepare(build_model("mlp", (1, 8, 8), 10, 0), context)

    first = prepare(tau=0.5)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("defense-*.pt")}
    assert len(files) == 2
    again = prepare(tau=0.9, nu=10.0)  # serving parameters: nothing retrained
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("defense-*.pt")} == files
    for mine, theirs in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    prepare(outlier_weight=1.0)  # a new victim; the misinformation model is shared
    names = {p.name for p in tmp_path.glob("defense-*.pt")}
    assert len(names) == 3 and set(files) < names


@pytest.mark.parametrize(
    "params",
    [{"tau": 0}, {"tau": 1.5}, {"nu": -1}, {"epochs": 0}, {"lr": 0}, {"outlier_weight": "x"}],
)
def test_bad_parameters_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, "adaptive_misinformation", params)
