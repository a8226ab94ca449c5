"""Determinism: the same match twice gives the same answers and the same stolen model (R1), and a
tournament's per-match results do not depend on how its matches are scheduled (R2): serially in
one process in a shuffled order, or as parallel Ray tasks sharing victim-service actors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arena.data import DataSplits
from arena.home import ArenaHome
from arena.match_data import MatchData
from arena.record import MatchResult, comparable
from arena.referee import referee_match
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train
from orchestration.config import parse_config
from orchestration.tournament import run_tournament
from orchestration.tracking import Tracker, default_tracking_uri


def test_R1_same_config_and_seed_twice_identical(
    digits_data: DataSplits, digits_victim_spec: VictimSpec, victim_cache: Path
) -> None:
    # a noise defense (keyed on the query bytes) and a thief that trains on its answers
    spec = MatchSpec(
        victim=digits_victim_spec,
        defenses=(PluginSpec(name="random_noise", params={"scale": 0.3}),),
        attack=PluginSpec(name="knockoff", params={"epochs": 3}),
        budget=200,
    )
    runs: list[tuple[MatchResult, VictimService]] = []
    for _ in range(2):
        service = build_service(
            spec.victim, spec.defenses, digits_data, victim_cache
        )  # a fresh service each time
        runs.append((referee_match(spec, service, MatchData.from_splits(digits_data)), service))
    (first, service_a), (second, service_b) = runs
    assert comparable(first) == comparable(second)
    assert first.queries_used == 200 and first.perturbation_l1 > 0  # the noise did perturb
    out_a = service_a.reference_outputs(digits_data.test.x)
    out_b = service_b.reference_outputs(digits_data.test.x)
    assert np.array_equal(out_a.defended, out_b.defended)  # bitwise, every test image
    assert not np.array_equal(out_a.defended, out_a.undefended)


def _r2_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Four matches (two thieves x two seeds) behind one noise defense: one victim service that
    two parallel match tasks query at once."""
    raw["name"] = "digits-r2"
    raw["victims"][0]["epochs"] = 10
    raw["defenses"] = [{"name": "random_noise", "params": {"scale": 0.3}}]
    raw["attacks"] = [{"name": a["name"], "params": {"epochs": 3}} for a in raw["attacks"]]
    raw["budgets"] = [200]
    raw["seeds"] = [0, 1]
    raw["ray"] = {"cpus_per_match": 1, "object_store_mb": 256}
    return raw


@pytest.mark.ray
def test_R2_one_and_two_workers_give_identical_results(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any], digits_data: DataSplits
) -> None:
    config = parse_config(_r2_config(smoke_config_dict))
    cache = tmp_path / "victims"
    load_or_train(config.victims[0], digits_data, cache)  # trained here once, loaded by both
    # (b) on the session's Ray (2 CPUs, 1 per match task: two matches at a time)
    tracker = Tracker(default_tracking_uri(tmp_path), "r2", artifact_root=tmp_path / "artifacts")
    outcome = run_tournament(config, tracker, ArenaHome.at(tmp_path, victims=cache))
    assert not outcome.failures and outcome.played == 4
    parallel = {r.match_key: comparable(r) for r in outcome.results}

    # (a) serially in this process, in a shuffled order
    specs = config.matches()
    order = specs[:]
    random.Random(7).shuffle(order)
    assert [s.key() for s in order] != [s.key() for s in specs]
    service = build_service(
        order[0].victim, order[0].defenses, digits_data, cache
    )  # one chain: one service, as on Ray
    serial: dict[str, dict[str, Any]] = {}
    for spec in order:
        result = referee_match(spec, service, MatchData.from_splits(digits_data))
        serial[spec.key()] = comparable(result)

    assert set(serial) == set(parallel) and len(serial) == 4
    for key, record in serial.items():
        assert record == parallel[key], key
