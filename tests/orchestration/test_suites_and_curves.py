"""Attack suites and pools in configs; budget curves; the strongest adversary ignores bounds."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from arena_testkit import record

from arena.attacker import ATTACKS
from arena.strongest import strongest, threats
from orchestration.budget_curves import budget_curves, curve_metrics, curves_markdown
from orchestration.config import ConfigError, parse_config
from orchestration.leaderboard import build_leaderboard
from orchestration.suites import SUITES
from orchestration.tune_config import parse_tune_config

BASE: dict[str, Any] = {
    "name": "t",
    "victims": [{"dataset": "digits", "arch": "mlp", "epochs": 2}],
    "defenses": ["none"],
    "attacks": ["knockoff"],
    "budgets": [100],
}


def config(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_names_registered_attacks_with_valid_settings(suite: str) -> None:
    parsed = parse_config(config(attacks=[{"suite": suite}]))
    assert len(parsed.attacks) == len(SUITES[suite])
    assert all(a.name in ATTACKS for a in parsed.attacks)


def test_a_suite_and_single_attacks_combine() -> None:
    parsed = parse_config(config(attacks=[{"suite": "fast"}, "jbda"]))
    assert [a.name for a in parsed.attacks] == ["knockoff", "copycat", "jbda"]


def test_unknown_suite_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(attacks=[{"suite": "strongest"}]))
    (path, message), *_ = info.value.problems
    assert path == "attacks" and "unknown attack suite 'strongest'" in message
    assert "standard" in message


def test_tuning_configs_take_suites_too() -> None:
    raw = {
        "name": "s",
        "victim": {"dataset": "digits", "arch": "mlp", "epochs": 2},
        "defense": "rounding",
        "attacks": [{"suite": "fast"}],
        "budget": 100,
        "trials": 2,
    }
    assert [a.name for a in parse_tune_config(raw).attacks] == ["knockoff", "copycat"]
    with pytest.raises(ConfigError, match="unknown attack suite"):
        parse_tune_config({**raw, "attacks": [{"suite": "nope"}]})


def test_pools_expand_matches_and_data_free_attacks_play_once() -> None:
    raw = config(
        attacks=["knockoff", "dfme", "true_labels"],
        pools=["in_distribution", "out_of_distribution"],
        budgets=[100, 200],
    )
    matches = parse_config(raw).matches()
    plays = sorted({(m.attack.name, m.pool) for m in matches})
    assert plays == [
        ("dfme", "none"),
        ("knockoff", "in_distribution"),
        ("knockoff", "out_of_distribution"),
        ("true_labels", "in_distribution"),
    ]
    assert len(matches) == 4 * 2


def test_a_pool_no_attack_can_play_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(pools=["none"]))
    assert dict(info.value.problems).keys() == {"pools"}
    with pytest.raises(ConfigError) as info:
        parse_config(config(pools=["imagenet"]))
    assert "pools.0" in dict(info.value.problems)


# ---- budget curves and the leaderboard --------------------------------------------------------


result = record


def test_queries_to_x_and_amplification() -> None:
    results = [
        result("none", "knockoff", 1000, 0.70),
        result("none", "knockoff", 5000, 0.82),  # 0.82 >= 0.9 * 0.9 = 0.81
        result("none", "knockoff", 10000, 0.85),
        result("mad", "knockoff", 1000, 0.60),
        result("mad", "knockoff", 5000, 0.75),
        result("mad", "knockoff", 10000, 0.815),
        result("top_k", "knockoff", 1000, 0.5),
        result("top_k", "knockoff", 5000, 0.6),
        result("top_k", "knockoff", 10000, 0.7),
        result("none", "copycat", 1000, 0.5),  # one budget only: no curve
    ]
    curves = {(c.defense, c.attack): c for c in budget_curves(results, 0.9)}
    assert set(curves) == {("none", "knockoff"), ("mad", "knockoff"), ("top_k", "knockoff")}
    assert curves[("none", "knockoff")].queries_to_x == 5000
    assert curves[("none", "knockoff")].amplification is None
    assert curves[("mad", "knockoff")].queries_to_x == 10000
    assert curves[("mad", "knockoff")].amplification == pytest.approx(2.0)
    never = curves[("top_k", "knockoff")]
    assert never.queries_to_x is None and never.amplification is None
    assert never.amplification_at_least == pytest.approx(2.0)
    table = curves_markdown(list(curves.values()), 0.9)
    assert "> 10000" in table and "2.00×" in table and "> 2.00×" in table
    metrics = curve_metrics(list(curves.values()))
    assert metrics["amplification.mad.knockoff"] == pytest.approx(2.0)
    assert metrics["amplification_at_least.top_k.knockoff"] == pytest.approx(2.0)


def test_seeds_are_averaged_before_queries_to_x() -> None:
    results = [
        result("none", "knockoff", 1000, 0.80, seed=0, match_key="a"),
        result("none", "knockoff", 1000, 0.84, seed=1, match_key="b"),  # mean 0.82 reaches
        result("none", "knockoff", 2000, 0.85, match_key="c"),
    ]
    (curve,) = budget_curves(results, 0.9)
    assert curve.queries_to_x == 1000 and curve.stolen[0] == pytest.approx(0.82)


def test_strongest_adversary_ignores_the_upper_bound_and_tags_pools() -> None:
    results = [
        result("none", "knockoff", 1000, 0.70),
        result("none", "copycat", 1000, 0.75, pool="out_of_distribution"),
        result("none", "true_labels", 1000, 0.88, upper_bound=True),
    ]
    (row,) = build_leaderboard(results)
    assert row.strongest_attack == "copycat [ood pool]"
    assert row.stolen_accuracy == pytest.approx(0.75)
    assert row.upper_bound_accuracy == pytest.approx(0.88)


def test_one_strongest_adversary_rule_for_the_leaderboard_and_tuning() -> None:
    """Seeds averaged per attack and budget (leaderboard) or every match alone (tuning); the
    highest stolen accuracy wins, a tie going to the smaller budget; bounds only when alone."""
    played = [
        result("none", "knockoff", 1000, 0.75, seed=0, match_key="a"),
        result("none", "knockoff", 1000, 0.25, seed=1, match_key="b"),  # mean 0.5
        result("none", "copycat", 500, 0.5, match_key="c"),  # ties it with fewer queries
        result("none", "true_labels", 100, 0.95, upper_bound=True, match_key="d"),
    ]
    cell = strongest(threats(played))
    assert (cell.attack, cell.budget, cell.stolen_accuracy) == ("copycat", 500, 0.5)
    match = strongest(threats(played, per_match=True))
    assert (match.attack, match.stolen_accuracy, match.results) == ("knockoff", 0.75, (played[0],))
    assert strongest(threats(played[3:])).attack == "true_labels"  # nothing else was played


def test_a_tree_victim_needs_a_neural_substitute_for_training_attacks() -> None:
    tree = {"dataset": "digits", "arch": "decision_tree", "max_depth": 4}
    with pytest.raises(ConfigError) as info:
        parse_config(config(victims=[tree], attacks=["knockoff", "path_finding"]))
    assert "knockoff" in dict(info.value.problems)["substitute_arch"]
    parse_config(config(victims=[tree], attacks=["path_finding"]))
    parse_config(config(victims=[tree], attacks=["knockoff"], substitute_arch="mlp"))
