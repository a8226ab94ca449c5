"""The referee's match record and the victim cache, on digits with the MLP victim."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from arena_testkit import as_plugin_specs, match_spec

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.record import RESULT_TAG_PREFIX, MatchResult, from_tracking, to_tracking
from arena.referee import play_match
from arena.seeds import attacker_rng, match_rng
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import cache_path, load_or_train, train_victim

BUDGET = 300
DEFENSE_NAMES = DEFENSES.names()
"""every registered defense plays a real match here"""
UNPERTURBED = {
    "none",
    "prada",
    "target_noise",
    "conferrable_fingerprint",
    "dataset_inference",
    "proof_of_work",
    "seat",
    "query_distribution",
}
"""defenses whose default settings answer with the raw probabilities (target_noise changes
which zoo member answers, never the answers themselves; the two verifiers that need no change
to the victim only keep evidence; proof of work makes queries cost, not answers change; the
detectors only flag by default; training-time defenses serve another model, whose answers
differ from the victim as trained)"""
ATTACK_NAMES = ["knockoff", "copycat"]
EPOCHS = 20
"""pinned: the default recipe (at least 4000 optimiser steps) would train 800 epochs on 300
queries per match; 20 epochs test the same plumbing and still steal well above the bars here"""
ATTACK_PARAMS: dict[str, object] = {"epochs": EPOCHS}


@pytest.fixture(scope="module")
def results(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> dict[tuple[str, str], MatchResult]:
    """Every defense x attack match, played once for the whole module."""
    return {
        (d, a): play_match(
            match_spec(digits_victim_spec, [d], a, ATTACK_PARAMS, budget=BUDGET),
            digits_data,
            victim_cache,
        )
        for d in DEFENSE_NAMES
        for a in ATTACK_NAMES
    }


@pytest.mark.parametrize("attack", ATTACK_NAMES)
@pytest.mark.parametrize("defense", DEFENSE_NAMES)
def test_match_record_in_range(
    results: dict[tuple[str, str], MatchResult],
    digits_victim_spec: VictimSpec,
    defense: str,
    attack: str,
) -> None:
    r = results[(defense, attack)]
    spec = match_spec(digits_victim_spec, [defense], attack, ATTACK_PARAMS, budget=BUDGET)
    assert r.match_key == spec.key() and r.victim_key == digits_victim_spec.key()
    assert (r.dataset, r.victim_arch, r.substitute_arch) == ("digits", "mlp", "mlp")
    assert (r.defense, r.attack, r.attack_name) == (defense, f"{attack}(epochs={EPOCHS})", attack)
    assert (r.budget, r.seed, r.trusted) == (BUDGET, 0, True)
    for value in (r.victim_accuracy, r.utility, r.stolen_accuracy, r.fidelity):
        assert 0.0 <= value <= 1.0
    assert r.victim_accuracy > 0.9  # the MLP victim as trained learns digits
    if r.utility > 0.5:  # a defense that answers benign users truthfully leaks something
        assert r.stolen_accuracy > 0.3
    assert r.queries_used == BUDGET
    assert (r.benign_flagged is not None) == DEFENSES.get(defense).detector
    assert (r.work_cost_ratio is not None) == DEFENSES.get(defense).requires_work
    assert r.detected == (r.queries_to_detection is not None)
    steps = json.loads(r.chain_steps)
    assert [step["defense"] for step in steps] == [defense]
    if not DEFENSES.get(defense).needs_training:  # else part of it is the retrained model's
        assert steps[0]["l1_per_query"] == pytest.approx(r.perturbation_l1, rel=1e-3, abs=1e-9)
    for value in (
        r.perturbation_l1,
        r.perturbation_kl,
        r.test_perturbation_l1,
        r.test_perturbation_kl,
        r.defense_us_per_query,
        r.latency_ratio,
        r.attack_seconds,
        r.match_seconds,
    ):
        assert math.isfinite(value) and value >= 0
    assert r.perturbation_l1 <= 2.0 and r.test_perturbation_l1 <= 2.0  # L1 of two distributions
    assert r.latency_ratio > 0
    assert r.attack_seconds > 0 and r.match_seconds >= r.attack_seconds
    if DEFENSES.get(defense).preserves_argmax:
        assert r.utility == r.victim_accuracy
    if defense in UNPERTURBED:
        assert r.perturbation_l1 == 0 and r.perturbation_kl == 0
        assert r.test_perturbation_l1 == 0 and r.test_perturbation_kl == 0
    else:
        assert r.perturbation_l1 > 0 and r.test_perturbation_l1 > 0
    if defense == "label_only":
        # KL(one-hot || p) is the surprise -log p(top-1): positive unless the victim is certain.
        assert r.perturbation_kl > 0


def test_undefended_knockoff_steals_well(results: dict[tuple[str, str], MatchResult]) -> None:
    r = results[("none", "knockoff")]
    assert r.stolen_accuracy > 0.6
    assert r.fidelity > 0.6


def test_reverse_sigmoid_perturbs_more_than_fine_rounding(
    results: dict[tuple[str, str], MatchResult],
) -> None:
    for attack in ATTACK_NAMES:
        rs, rounding = results[("reverse_sigmoid", attack)], results[("rounding", attack)]
        assert rs.perturbation_l1 > rounding.perturbation_l1 > 0


def test_the_victim_is_the_same_in_every_match(
    results: dict[tuple[str, str], MatchResult],
) -> None:
    # training-time defenses serve a retrained model, but are measured against the victim
    assert len({r.victim_accuracy for r in results.values()}) == 1
    assert len({r.victim_key for r in results.values()}) == 1
    assert len({r.match_key for r in results.values()}) == len(results)


def test_result_record_is_frozen_and_strict(results: dict[tuple[str, str], MatchResult]) -> None:
    r = results[("none", "knockoff")]
    with pytest.raises(ValueError):
        r.stolen_accuracy = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        MatchResult(**r.model_dump(), extra_field=1)
    assert MatchResult.model_validate(r.model_dump()) == r


def test_every_record_round_trips_through_its_tracking_form(
    results: dict[tuple[str, str], MatchResult],
) -> None:
    for r in results.values():
        metrics, tags = to_tracking(r)
        assert all(isinstance(value, float) for value in metrics.values())
        assert all(key.startswith(RESULT_TAG_PREFIX) for key in tags)
        assert from_tracking(metrics, {**tags, "arena.kind": "match"}) == r  # other tags ignored


def test_build_service_serves_the_cached_victim(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    service = build_service(
        digits_victim_spec, as_plugin_specs(["label_only"]), digits_data, victim_cache
    )
    input_spec, output_spec = service.public_spec()
    assert input_spec.shape == (1, 8, 8) and input_spec.dtype == "float32"
    assert output_spec.num_classes == 10 and output_spec.label_only
    reference = service.reference_outputs(digits_data.test.x)
    assert reference.undefended.shape == reference.defended.shape == (397, 10)
    assert set(reference.defended.ravel().tolist()) <= {0.0, 1.0}


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_victim_cache_round_trip(
    digits_data: DataSplits, digits_victim_spec: VictimSpec, tmp_path: Path
) -> None:
    first = load_or_train(digits_victim_spec, digits_data, tmp_path)
    assert not first.from_cache
    assert cache_path(digits_victim_spec, tmp_path).is_file()
    assert list(tmp_path.glob("*.tmp")) == []
    second = load_or_train(digits_victim_spec, digits_data, tmp_path)
    assert second.from_cache
    assert second.test_accuracy == first.test_accuracy
    assert state_dicts_equal(first.model, second.model)
    assert not second.model.training
    # A different spec is a different cache entry.
    other = digits_victim_spec.model_copy(update={"epochs": 1})
    assert cache_path(other, tmp_path) != cache_path(digits_victim_spec, tmp_path)
    assert not load_or_train(other, digits_data, tmp_path).from_cache


def test_training_is_bitwise_reproducible(
    digits_data: DataSplits, digits_victim_spec: VictimSpec
) -> None:
    spec = digits_victim_spec.model_copy(update={"epochs": 5})
    a, b = train_victim(spec, digits_data), train_victim(spec, digits_data)
    assert state_dicts_equal(a.model, b.model)
    assert a.test_accuracy == b.test_accuracy
    c = train_victim(spec.model_copy(update={"seed": 1}), digits_data)
    assert not state_dicts_equal(a.model, c.model)


def test_attacker_draws_depend_on_attack_and_seed_but_not_on_defenses(
    digits_victim_spec: VictimSpec,
) -> None:
    def spec(defense: str, seed: int) -> MatchSpec:
        return MatchSpec(
            victim=digits_victim_spec,
            defenses=(PluginSpec(name=defense),),
            attack=PluginSpec(name="knockoff"),
            budget=300,
            seed=seed,
        )

    draws = {
        (d, s): attacker_rng(spec(d, s)).integers(0, 2**31, size=8).tolist()
        for d in ("none", "label_only")
        for s in (0, 1)
    }
    assert spec("none", 0).key() != spec("label_only", 0).key()
    assert draws[("none", 0)] == draws[("label_only", 0)]  # common random numbers
    assert draws[("none", 0)] != draws[("none", 1)]


def test_the_referee_streams_keep_their_historical_salts(digits_victim_spec: VictimSpec) -> None:
    """Records made before the streams had names must replay: the salts are pinned here."""
    spec = match_spec(digits_victim_spec, ["prada"])
    for stream, salt in (("removal", 0x5E11), ("goodput", 0x600D), ("benign", 0xBE9167)):
        expected = np.random.default_rng(int(spec.key(), 16) ^ salt).integers(0, 2**31, size=8)
        assert match_rng(spec, stream).integers(0, 2**31, size=8).tolist() == expected.tolist()
