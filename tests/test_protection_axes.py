"""The four axes of protection (arena/protection_axes.py): each against its own strongest
adversary, with the bars a defense must clear to protect on it, and the leaderboard's table."""

from __future__ import annotations

from typing import Any

import pytest
from arena_testkit import record

from arena.protection_axes import (
    ATTRIBUTION_RATE,
    COST_FACTOR,
    DETECTION_FALSE_POSITIVES,
    PREVENTION_MARGIN,
    protection_axes,
)
from arena.record import MatchResult
from orchestration.leaderboard import (
    axes_markdown,
    axes_rich_table,
    build_leaderboard,
    has_more_axes,
)


def label(result: MatchResult) -> str:
    return result.attack


def seeds(defense: str, attack: str, stolen: float, **per_seed: list[Any]) -> list[MatchResult]:
    """Three seeds of one attack at 5k; ``per_seed`` gives a field's value for each seed."""
    return [
        record(
            defense,
            attack,
            5000,
            stolen,
            seed=seed,
            **{name: values[seed] for name, values in per_seed.items()},
        )
        for seed in range(3)
    ]


def detector_matches() -> list[MatchResult]:
    """knockoff is always flagged, jbda once in three; 12 benign callers, one flagged."""
    watched = {"benign_callers": [4, 4, 4], "benign_callers_flagged": [0, 1, 0]}
    knockoff = seeds(
        "prada",
        "knockoff",
        0.85,
        detected=[True, True, True],
        queries_to_detection=[200, 300, 400],
        benign_flagged=[False, True, False],
        **watched,
    )
    jbda = seeds(
        "prada",
        "jbda",
        0.70,
        detected=[False, True, False],
        queries_to_detection=[None, 900, None],
        benign_flagged=[False, False, False],
        benign_callers=[4, 4, 4],
        benign_callers_flagged=[0, 0, 0],
    )
    return knockoff + jbda


def test_detection_is_judged_by_the_thief_flagged_least_often() -> None:
    axes = protection_axes(detector_matches(), label)
    assert axes.detection.adversary == "jbda @5000"
    assert axes.detection.value == pytest.approx(1 / 3)
    assert "benign FPR 1/24" in axes.detection.note and "900 queries" in axes.detection.note
    assert axes.detection.protects is False
    assert axes.prevention.adversary == "knockoff @5000"  # prevention has its own adversary
    assert axes.attribution.value is None and axes.cost.value is None


def test_detection_protects_only_under_the_false_positive_bar() -> None:
    always = [
        r.model_copy(update={"detected": True, "queries_to_detection": 100})
        for r in detector_matches()
    ]
    assert protection_axes(always, label).detection.protects is True  # FPR 1/24 ≈ 0.04
    noisy = [r.model_copy(update={"benign_callers_flagged": 1}) for r in always]
    assert DETECTION_FALSE_POSITIVES < 6 / 24
    assert protection_axes(noisy, label).detection.protects is False


def test_attribution_counts_false_claims_on_independent_models() -> None:
    thefts = seeds("dawn", "knockoff", 0.8, ownership_verified=[True, True, True])
    thefts += seeds("dawn", "copycat", 0.8, ownership_verified=[True, False, True])
    independent = seeds(
        "dawn", "true_labels", 0.85, upper_bound=[True] * 3, ownership_verified=[False] * 3
    )
    axes = protection_axes(thefts + independent, label)
    assert axes.attribution.adversary == "copycat @5000"
    assert axes.attribution.value == pytest.approx(2 / 3) and ATTRIBUTION_RATE > 2 / 3
    assert axes.attribution.note == "false claims 0/3 independent models"
    claimed_all = [r.model_copy(update={"ownership_verified": True}) for r in thefts]
    assert protection_axes(claimed_all + independent, label).attribution.protects is True
    wrongly = [r.model_copy(update={"ownership_verified": True}) for r in independent]
    claims = protection_axes(claimed_all + wrongly, label).attribution
    assert claims.protects is False and "3/3" in claims.note
    unmeasured = protection_axes(claimed_all, label).attribution
    assert unmeasured.protects is True and "not measured" in unmeasured.note


def test_prevention_is_judged_against_the_undefended_victim() -> None:
    matches = seeds("rs", "knockoff", 0.80)
    assert protection_axes(matches, label).prevention.protects is None  # nothing to compare
    assert protection_axes(matches, label, 0.81 + PREVENTION_MARGIN).prevention.protects
    assert not protection_axes(matches, label, 0.82).prevention.protects


def test_cost_is_judged_by_the_thief_that_paid_least() -> None:
    paying = seeds("pow", "knockoff", 0.85, work_cost_ratio=[40.0, 50.0, 60.0])
    paying += seeds("pow", "copycat", 0.84, work_cost_ratio=[3.0, 4.0, 5.0])
    axes = protection_axes(paying, label)
    assert axes.cost.adversary == "copycat @5000" and axes.cost.value == pytest.approx(4.0)
    assert axes.cost.protects is (COST_FACTOR <= 4.0)


def test_the_leaderboard_shows_the_axes_and_what_each_defense_protects_on() -> None:
    undefended = seeds("none", "knockoff", 0.87) + seeds("none", "jbda", 0.75)
    board = build_leaderboard(undefended + detector_matches())
    assert has_more_axes(board)
    prada = next(row for row in board if row.defense == "prada")
    assert prada.axes is not None and prada.axes.protects_on() == []
    table = axes_markdown(board)
    assert "TPR 0.33 vs jbda @5000" in table and "| none |" in table
    assert axes_rich_table(board, "axes").row_count == 2
    assert not has_more_axes(build_leaderboard(undefended))


def test_a_study_can_maximise_another_axis_under_a_false_positive_bound() -> None:
    from orchestration.study import metric_names
    from orchestration.trial_scores import score
    from orchestration.tune_config import parse_tune_config

    trial = [r for r in detector_matches() if r.seed == 1]  # one seed, as a tuning trial plays
    prevention = score(trial, 0.9, 0.01, None)
    assert prevention.protection == pytest.approx(0.15) and prevention.axis == "prevention"
    detection = score(trial, 0.9, 0.01, None, axis="detection")
    assert detection.protection == 1.0  # both thieves flagged on seed 1
    assert detection.false_positive_rate == pytest.approx(1 / 8) and detection.feasible
    bounded = score(trial, 0.9, 0.01, None, axis="detection", max_false_positives=0.1)
    assert not bounded.feasible  # 1 of 8 benign callers flagged is above a 10 % bound
    assert bounded.shortfall(0.1) == "benign false positives above the bound"
    assert detection.shortfall(None) == "" and score(trial, 0.99, 0.01, None).shortfall(0.5) == (
        "below the utility floor"
    )
    unmeasured = score(trial, 0.9, 0.01, None, axis="cost")
    assert unmeasured.protection == 0.0  # no proof of work: nothing protected on cost
    raw = {
        "name": "s",
        "victim": {"dataset": "digits", "arch": "mlp"},
        "defense": "prada",
        "attacks": ["knockoff"],
        "budget": 100,
        "axis": "detection",
        "max_false_positives": 0.01,
    }
    config = parse_tune_config(raw)
    assert metric_names(config) == ["utility", "detection"]
    with pytest.raises(Exception, match="axis"):
        parse_tune_config({**raw, "axis": "deterrence"})


def test_a_multi_account_thief_is_caught_only_as_far_as_its_accounts_are() -> None:
    split = seeds(
        "prada",
        "knockoff(identities=4)",
        0.85,
        detected=[True] * 3,
        identities=[4] * 3,
        identities_flagged=[1, 2, 1],
        benign_flagged=[False] * 3,
    )
    axes = protection_axes(split, label)
    assert axes.detection.value == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3)


def test_a_removal_is_its_own_adversary() -> None:
    kept = seeds("dawn", "knockoff", 0.85, ownership_verified=[True] * 3)
    removed = seeds(
        "dawn", "knockoff", 0.80, ownership_verified=[False, False, True], removal=["distill"] * 3
    )
    (row,) = build_leaderboard(kept + removed)
    assert row.axes is not None
    assert row.axes.attribution.adversary == "knockoff [distill] @5000"
    assert row.axes.attribution.value == pytest.approx(1 / 3)
    assert row.strongest_attack == "knockoff"  # the model as stolen steals the most
