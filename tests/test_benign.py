"""Benign traffic (arena/benign.py): honest callers share the victim service with the thief, each
with its own account, so a detector's false-positive rate is measured in the same match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from arena.benign import BENIGN_BATCH, benign_traffic, near_boundary
from arena.data import DataSplits
from arena.match_data import MatchData
from arena.referee import play_match
from arena.service_factory import build_service
from arena.specs import BenignSpec, MatchSpec, PluginSpec, VictimSpec

BUDGET = 300


def spec_for(
    victim: VictimSpec, benign: BenignSpec | None, attack: str = "jbda", delta: float = 0.9
) -> MatchSpec:
    prada = PluginSpec(name="prada", params={"min_samples": 50, "delta": delta})
    return MatchSpec(
        victim=victim,
        defenses=(prada,),
        attack=PluginSpec(name=attack, params={"epochs": 2}),
        budget=BUDGET,
        benign=benign,
    )


def test_near_boundary_picks_the_smallest_top_two_margins() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.5, 0.5], [0.7, 0.3], [0.52, 0.48]])
    assert near_boundary(probs, 0.4).tolist() == [2, 4]
    assert near_boundary(probs, 0.01).tolist() == [2]  # at least one image


def test_a_population_plays_its_callers_with_their_own_streams(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    population = BenignSpec(callers=3, batch_sizes=(16, 64), boundary_callers=1, queries=200)
    spec = spec_for(digits_victim_spec, population)
    service = build_service(spec.victim, spec.defenses, digits_data, victim_cache)
    data = MatchData.from_splits(digits_data, spec.pool, None, "api")
    probs = torch.softmax(torch.randn(len(digits_data.test), 10), dim=1)
    callers = [run.stats for run in benign_traffic(spec, service, data, probs)]
    boundary = round(0.2 * len(digits_data.test))  # the boundary caller's images, each once
    assert [c.used for c in callers] == [200, 200, boundary]
    assert [c.batches for c in callers] == [13, 4, -(-boundary // 16)]  # batches 16, 64, 16


def test_without_a_population_one_caller_streams_the_test_set(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    spec = spec_for(digits_victim_spec, None)
    service = build_service(spec.victim, spec.defenses, digits_data, victim_cache)
    data = MatchData.from_splits(digits_data, spec.pool, None, "api")
    (run,) = benign_traffic(spec, service, data, torch.zeros(len(digits_data.test), 10))
    caller = run.stats
    assert run.work_seconds == 0.0  # the chain asks for no work
    assert caller.used == BUDGET and caller.batches == -(-BUDGET // BENIGN_BATCH)


def test_false_positives_are_counted_on_callers_sharing_the_thiefs_service(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    """PRADA at delta 0.9 leaves natural traffic alone; at 0.99 it flags everyone, the thief and
    the four benign callers beside it (the false positives the record counts)."""
    population = BenignSpec(callers=4, batch_sizes=(32, 128), boundary_callers=2)
    calm = play_match(spec_for(digits_victim_spec, population), digits_data, victim_cache)
    assert calm.benign_callers == 4
    assert calm.benign_callers_flagged == 0 and calm.benign_flagged is False
    strict = spec_for(digits_victim_spec, population, delta=0.99)
    jumpy = play_match(strict, digits_data, victim_cache)
    assert jumpy.detected
    assert jumpy.benign_callers_flagged == 4 and jumpy.benign_flagged
    assert jumpy.benign_queries_to_detection is not None
    # the thief's own play does not depend on who else queried the service
    one = spec_for(digits_victim_spec, BenignSpec(callers=1), delta=0.99)
    alone = play_match(one, digits_data, victim_cache)
    assert alone.stolen_accuracy == jumpy.stolen_accuracy
    assert alone.queries_to_detection == jumpy.queries_to_detection


def test_population_is_part_of_the_key_only_when_set(digits_victim_spec: VictimSpec) -> None:
    plain = spec_for(digits_victim_spec, None)
    assert "benign" not in plain.model_dump(mode="json", context={"key": True})
    assert spec_for(digits_victim_spec, BenignSpec()).key() != plain.key()


def test_bad_populations_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="boundary_callers"):
        BenignSpec(callers=2, boundary_callers=3)
    with pytest.raises(ValidationError, match="batch_sizes"):
        BenignSpec(batch_sizes=())
    with pytest.raises(ValidationError, match="callers"):
        BenignSpec(callers=0)
    assert np.all(np.asarray(BenignSpec().batch_sizes) > 0)
