"""The thieves' inner best response (agents/_best_response.py): a seeded search over recipes and
target forms scored on a held-out part of the thief's own answers, never on test data, never
with extra queries; off (``best_response_trials: 0``) the attacks train exactly as before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from arena_testkit import ServiceFactory, open_oracle, pool_knowledge
from torch import nn

from agents._best_response import (
    EPOCH_SCALES,
    LEARNING_RATES,
    Candidate,
    best_response,
    draw_candidates,
    form_targets,
    pick,
)
from agents._transfer import query_random_subset
from agents.activethief import ActiveThief
from agents.copycat import Copycat
from agents.knockoff import Knockoff
from arena.attacker import ATTACKS
from arena.data import DataSplits, Split
from arena.errors import InvalidParameters
from arena.knowledge import Knowledge
from arena.referee import play_match
from arena.registry import build_plugin
from arena.seeds import attacker_rng, torch_seed
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from orchestration.config import ConfigError, parse_config
from orchestration.leaderboard import build_leaderboard, markdown_table, recipe_brief
from orchestration.tune_config import TUNING_BEST_RESPONSE_TRIALS, parse_tune_config

BUDGET = 300
WEAK_ARCH = "softmax_regression"
"""a granted substitute the search can beat (an MLP agrees better on digits)"""


def knowledge(data: DataSplits, arch: str = WEAK_ARCH) -> Knowledge:
    return dataclasses.replace(pool_knowledge(data), substitute_arch=arch)


def steal(
    make_service: ServiceFactory, data: DataSplits, attack: Any, seed: int = 0
) -> tuple[nn.Module, Knowledge, int]:
    """The attack's substitute, its knowledge (fits recorded) and the queries it was charged."""
    service = make_service()
    granted = knowledge(data)
    model = attack.steal(
        open_oracle(service, "thief", BUDGET), granted, np.random.default_rng(seed)
    )
    return model, granted, service.account_stats("thief").used


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_search_is_seeded_spends_exactly_the_budget_and_fits_the_winner_last(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    attack = Knockoff(epochs=3, best_response_trials=4)
    first, fits, used = steal(make_service, digits_data, attack)
    second, again, used_again = steal(make_service, digits_data, attack)
    assert used == used_again == BUDGET  # the search asks nothing more
    assert same_weights(first, second)
    assert fits.fits[-1].describe() == again.fits[-1].describe()
    assert len(fits.fits) == 4 + 1  # four candidates on the split, then the final fit
    assert len(fits.fits[-1].x) == BUDGET  # the final substitute trains on every answer
    assert all(len(f.x) < BUDGET for f in fits.fits[:-1])


@pytest.mark.parametrize("trials", [0, 1])
def test_off_trains_exactly_as_before(
    make_service: ServiceFactory, digits_data: DataSplits, trials: int
) -> None:
    """Today's code, written out: same queries, same seed, same single fit."""
    searched, fits, _ = steal(
        make_service, digits_data, Knockoff(epochs=3, best_response_trials=trials)
    )
    service = make_service()
    granted = knowledge(digits_data)
    rng = np.random.default_rng(0)
    oracle = open_oracle(service, "thief", BUDGET)
    x, answers = query_random_subset(oracle, digits_data.attacker_pool.x, rng, 256)
    seed = torch_seed(rng)
    recipe = Knockoff(epochs=3).training_recipe(len(x))
    today = granted.fit(granted.make_substitute(seed), x, answers, recipe, seed=seed)
    assert same_weights(searched, today)
    assert len(fits.fits) == 1


def test_activethief_off_keeps_its_warm_started_final_fit(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    plain = ActiveThief(epochs=2, round_epochs=1, rounds=2)
    searched = dataclasses.replace(plain, best_response_trials=3)
    _, off, _ = steal(make_service, digits_data, plain)
    _, on, used = steal(make_service, digits_data, searched)
    assert len(off.fits) == 2 + 1  # one fit per round, then the final one
    assert len(on.fits) == 2 + 3 + 1  # the rounds, three candidates, the final fit
    assert used == BUDGET


def test_the_selection_picks_the_best_held_out_agreement(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service()
    granted = knowledge(digits_data)
    rng = np.random.default_rng(0)
    oracle = open_oracle(service, "thief", BUDGET)
    x, answers = query_random_subset(oracle, digits_data.attacker_pool.x, rng, 256)
    attack = Knockoff(epochs=3)
    _, outcome = best_response(granted, x, answers, 0, 5, attack.targets, attack.training_recipe)
    assert outcome.candidates[0] == Candidate()  # the attack's own recipe is always scored
    assert outcome.chosen == int(np.argmax(outcome.agreements))
    assert outcome.agreements[outcome.chosen] >= outcome.agreements[0]
    # on digits an MLP beats the granted softmax regression at 3 epochs: a real, significant choice
    assert outcome.chosen != 0
    assert outcome.edge_z > 2.3
    assert granted.fits[-1].arch == (outcome.candidates[outcome.chosen].arch or WEAK_ARCH)


def _hits(right: int, rows: int = 200, offset: int = 0) -> torch.Tensor:
    """A hit vector with ``right`` hits among ``rows``, starting at row ``offset`` (cyclic)."""
    hits = torch.zeros(rows, dtype=torch.bool)
    hits[(torch.arange(right) + offset) % rows] = True
    return hits


def test_ties_go_to_the_earlier_candidate() -> None:
    assert pick([_hits(140), _hits(140), _hits(120)]) == (0, 0.0)
    assert pick([_hits(100), _hits(160), _hits(160)])[0] == 1


def test_the_own_recipe_is_left_only_for_a_significant_edge() -> None:
    """200 held-out rows: a candidate 1.5 points better on rows the own recipe misses is luck
    among four candidates; 8 points better is not. The same edge counts for less when the two
    disagree on many rows (paired differences)."""
    own = _hits(160)
    chosen, z = pick([own, _hits(163), _hits(150), _hits(100)])
    assert chosen == 0 and 0 < z < 2.13
    chosen, z = pick([own, _hits(150), _hits(176), _hits(100)])
    assert chosen == 2 and z > 2.13
    weak = _hits(100)
    assert pick([own, _hits(176), weak, weak])[0] == 1
    noisy = _hits(176, offset=60)  # the same mean, but it misses 24 rows the own recipe gets
    assert pick([own, noisy, weak, weak])[0] == 0
    assert pick([own, noisy])[0] == 1  # one comparison, not three: 1.645 errors suffice


def test_label_only_answers_collapse_target_forms(digits_data: DataSplits) -> None:
    """One-hot answers: soft, tempered and hard targets train alike, so each recipe and
    architecture is drawn once, whatever its form."""
    labels = torch.arange(40) % 10
    one_hot = F.one_hot(labels, 10).float()
    attack = Copycat(epochs=2)
    granted = knowledge(digits_data)
    drawn = draw_candidates(
        granted, one_hot, attack.targets, attack.training_recipe, 64, np.random.default_rng(0)
    )
    plans = [(c.epoch_scale, c.lr, c.shift_pixels, c.arch) for c in drawn[1:]]
    assert len(plans) == len(set(plans)) > 10
    assert all(c.epoch_scale in EPOCH_SCALES and c.lr in LEARNING_RATES for c in drawn[1:])
    tempered = form_targets("soft T=2", torch.tensor([[0.64, 0.36]]), attack.targets)
    assert torch.allclose(tempered, torch.tensor([[0.8 / 1.4, 0.6 / 1.4]]))  # flattened


def test_bad_trial_counts_are_typed_errors() -> None:
    for bad in (-1, 2.5, True, 65):
        with pytest.raises(InvalidParameters, match="best_response_trials"):
            build_plugin(ATTACKS, "knockoff", {"best_response_trials": bad})


# ---- through the referee ----------------------------------------------------------------------


def _match(victim: VictimSpec, trials: int) -> MatchSpec:
    params = {"epochs": 3, "best_response_trials": trials}
    return MatchSpec(
        victim=victim,
        defenses=(PluginSpec(name="reverse_sigmoid"),),
        attack=PluginSpec(name="knockoff", params=params),
        budget=BUDGET,
        substitute_arch=WEAK_ARCH,
    )


def test_the_search_draws_what_its_fixed_self_draws(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    """The best response changes how a thief trains, never what it asks: same queries, same
    seeds as the fixed recipe, so when the search keeps its own recipe the match is its fixed
    self's, bit for bit (and a difference between the two is the search's alone)."""
    fixed, searched = _match(digits_victim_spec, 0), _match(digits_victim_spec, 2)
    assert fixed.key() != searched.key()
    assert attacker_rng(fixed).integers(2**62) == attacker_rng(searched).integers(2**62)
    mlp = {"substitute_arch": "mlp"}  # granted the MLP, the menu holds nothing better
    plain = play_match(fixed.model_copy(update=mlp), digits_data, victim_cache)
    both = play_match(searched.model_copy(update=mlp), digits_data, victim_cache)
    assert json.loads(both.thief_recipe) == json.loads(plain.thief_recipe)  # the own recipe kept
    assert both.stolen_accuracy == plain.stolen_accuracy and both.fidelity == plain.fidelity


def _shuffled_test_labels(data: DataSplits) -> DataSplits:
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(data.test.y)))
    return dataclasses.replace(data, test=Split(data.test.x, data.test.y[order]))


def test_match_records_the_chosen_recipe_and_never_reads_test_labels(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """Shuffled test labels change the stolen accuracy, never the thief's choice: the same
    recipe and the same substitute (fidelity to the victim on the test images is unchanged)."""
    spec = _match(digits_victim_spec, 6)
    honest = play_match(spec, digits_data, victim_cache)
    poisoned = play_match(spec, _shuffled_test_labels(digits_data), victim_cache)
    assert honest.stolen_accuracy != poisoned.stolen_accuracy
    assert honest.thief_recipe == poisoned.thief_recipe
    assert honest.fidelity == poisoned.fidelity
    assert honest.queries_used == honest.audit_queries == BUDGET
    recipe = json.loads(honest.thief_recipe)
    assert recipe["arch"] == "mlp"  # the search's pick, not the granted softmax regression
    assert honest.substitute_arch == WEAK_ARCH  # the grant itself is unchanged
    assert "mlp" in recipe_brief(honest.thief_recipe)
    row = build_leaderboard([honest])[0]
    assert row.strongest_recipe == recipe_brief(honest.thief_recipe)
    assert f"({row.strongest_recipe}) @{BUDGET}" in markdown_table([row])


def test_recipe_brief_is_short() -> None:
    recipe = {"arch": "lenet5", "targets": "soft", "epochs": 125, "lr": 0.001, "shift_pixels": 0}
    assert recipe_brief(json.dumps(recipe)) == "soft, 125 ep, lr 1e-3, lenet5"
    shifted = {**recipe, "targets": "soft T=2", "lr": 0.0005, "shift_pixels": 2}
    assert recipe_brief(json.dumps(shifted)) == "soft T=2, 125 ep, lr 5e-4, shift 2, lenet5"
    assert recipe_brief("") == recipe_brief("not json") == ""


# ---- configs ----------------------------------------------------------------------------------


def _trials_of(specs: list[MatchSpec]) -> dict[str, object]:
    return {s.attack.name: s.attack.params.get("best_response_trials") for s in specs}


CONFIGS = Path(__file__).parent.parent / "configs"


def _yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_tournament_config_applies_best_response_to_attacks_that_take_it() -> None:
    raw = _yaml(CONFIGS / "digits_smoke.yaml")
    raw["attacks"] = [
        "knockoff",
        {"name": "copycat", "params": {"best_response_trials": 2}},
        "jbda",
        "dfme",
    ]
    off = _trials_of(parse_config(raw).matches())  # off by default: only the explicit one
    assert off == {"knockoff": None, "copycat": 2, "jbda": None, "dfme": None}
    raw["best_response"] = {"trials": 6}
    played = _trials_of(parse_config(raw).matches())
    # dfme trains a generator and a student, not on a transfer set: it has no such field
    assert played == {"knockoff": 6, "copycat": 2, "jbda": 6, "dfme": None}
    raw["best_response"] = {"trials": -1}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert [where for where, _ in info.value.problems] == ["best_response.trials"]


def test_tuning_studies_search_by_default() -> None:
    tune_smoke_dict = _yaml(CONFIGS / "tuning" / "digits_smoke.yaml")
    on = _trials_of(parse_tune_config(tune_smoke_dict).specs_for({}))
    assert on == {"knockoff": TUNING_BEST_RESPONSE_TRIALS, "copycat": TUNING_BEST_RESPONSE_TRIALS}
    off = parse_tune_config({**tune_smoke_dict, "best_response": {"trials": 0}})
    assert set(_trials_of(off.specs_for({})).values()) == {None}
