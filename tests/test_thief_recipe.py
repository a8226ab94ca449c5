"""The thieves' shared training recipe, the augmentation it may use, and what a match records of
it: the recipe of the final fit, and the second track retrained with the reference recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from arena_testkit import match_spec

from agents._thief_recipe import MIN_EPOCHS, MIN_STEPS
from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.errors import InvalidParameters
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import VictimSpec
from arena.training import REFERENCE_RECIPE, random_shift

TRANSFER_SET_ATTACKS = (
    "knockoff",
    "copycat",
    "activethief",
    "jbda",
    "jbda_tr",
    "random_queries",
    "true_labels",
)


@pytest.mark.parametrize("name", TRANSFER_SET_ATTACKS)
def test_auto_epochs_train_at_least_min_steps_and_20_epochs(name: str) -> None:
    attack = build_plugin(ATTACKS, name, {})
    small = attack.training_recipe(1000)  # 16 batches of 64 an epoch
    assert small.epochs == -(-MIN_STEPS // 16) == 250
    assert small.epochs * 16 >= MIN_STEPS and not small.cosine
    assert attack.training_recipe(10_000).epochs == 26  # 157 steps an epoch
    assert attack.training_recipe(50_000).epochs == MIN_EPOCHS  # 782 steps x 20 > MIN_STEPS
    shift = 1 if name.startswith("jbda") else 0  # JBDA alone augments by default
    assert (small.lr, small.batch_size, small.shift_pixels) == (1e-3, 64, shift)


def test_explicit_training_fields_are_kept_exactly() -> None:
    attack = build_plugin(
        ATTACKS, "knockoff", {"epochs": 3, "schedule": "cosine", "shift_pixels": 2, "lr": 5e-4}
    )
    recipe = attack.training_recipe(1000)
    assert (recipe.epochs, recipe.cosine, recipe.shift_pixels, recipe.lr) == (3, True, 2, 5e-4)
    assert build_plugin(ATTACKS, "copycat", {"min_steps": 32}).training_recipe(1000).epochs == 20


@pytest.mark.parametrize(
    "params",
    [{"schedule": "linear"}, {"min_steps": 0}, {"epochs": 0}, {"shift_pixels": -1}, {"lr": 0}],
)
def test_bad_training_fields_are_typed_errors(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(ATTACKS, "knockoff", params)


def test_random_shift_moves_each_image_within_bounds_and_replays() -> None:
    x = torch.rand(64, 1, 8, 8) + 1  # no zeros: a zero pixel can only come from the fill
    first = random_shift(x, 2, torch.Generator().manual_seed(3))
    again = random_shift(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == x.shape
    moved = 0
    for original, shifted in zip(x, first, strict=True):
        kept = shifted != 0
        rows, cols = kept[0].any(dim=1).sum(), kept[0].any(dim=0).sum()
        assert rows >= 6 and cols >= 6  # at most 2 px cut on each axis
        # the kept block is the original moved: every kept value occurs in the original
        assert torch.isin(shifted[kept], original).all()
        moved += int(not torch.equal(shifted, original))
    assert moved > 40  # 24 of 25 offsets move the image


def test_a_match_records_the_thiefs_recipe_and_the_reference_track(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, [], "knockoff", {"epochs": 3}, budget=300)
    result = play_match(spec, digits_data, victim_cache)
    recipe = json.loads(result.thief_recipe)
    assert recipe == {
        "arch": "mlp",
        "targets": "soft",
        "epochs": 3,
        "lr": 1e-3,
        "batch_size": 64,
        "schedule": "constant",
        "shift_pixels": 0,
        "weight_decay": 0.0,
    }
    assert result.reference_stolen_accuracy is not None
    # 3 epochs against the reference's 20 on the same answers: the second track learns more
    assert result.reference_stolen_accuracy > result.stolen_accuracy
    assert REFERENCE_RECIPE.epochs == 20 and not REFERENCE_RECIPE.cosine
    copycat = play_match(
        match_spec(digits_victim_spec, [], "copycat", {"epochs": 3}, budget=300),
        digits_data,
        victim_cache,
    )
    assert json.loads(copycat.thief_recipe)["targets"] == "hard"


def test_an_attack_that_fits_no_substitute_records_no_reference_track(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, [], "path_finding", {}, budget=300)
    result = play_match(spec, digits_data, victim_cache)
    assert result.thief_recipe == "" and result.reference_stolen_accuracy is None
