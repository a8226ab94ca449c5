"""The privileged threat models on the Ray path: the model-access thief gets its copy of the victim
from the victim-service actor, the data-access thief its training split from the match data the
runtime puts in the object store (for its matches only); both records equal the in-process ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray

import agents  # noqa: F401
from arena.data import DataSplits
from arena.knowledge import API, DATA_ACCESS
from arena.match_data import MatchData
from arena.oracle import InputSpec
from arena.record import comparable
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train
from orchestration.ray_service import start_victim_service
from orchestration.runtime import data_key, play_match_task

pytestmark = pytest.mark.ray

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)


def spec(attack: str, params: dict[str, Any], pool: str = "in_distribution") -> MatchSpec:
    return MatchSpec(
        victim=VICTIM,
        defenses=(),
        attack=PluginSpec(name=attack, params=params),
        budget=100,
        pool=pool,
    )


def test_the_runtime_ships_the_training_split_only_to_data_access_matches() -> None:
    assert data_key(spec("data_access", {}, "none")) == ("digits", "none", DATA_ACCESS)
    assert data_key(spec("model_access", {})) == ("digits", "in_distribution", API)
    assert data_key(spec("knockoff", {})) == ("digits", "in_distribution", API)


def test_privileged_threat_models_play_on_ray_as_in_process(
    ray_session: None, digits: DataSplits, cache_dir: Path
) -> None:
    victim = load_or_train(VICTIM, digits, cache_dir)
    actor = start_victim_service(
        VICTIM, (), ray.put(victim.model.state_dict()), InputSpec(digits.input_shape), 10
    )
    try:
        for match in (
            spec("model_access", {"obfuscation": "distill", "epochs": 20}),
            spec("data_access", {"epochs": 20}, "none"),
        ):
            threat = data_key(match)[2]
            data = MatchData.from_splits(digits, match.pool, threat_model=threat)
            remote = ray.get(play_match_task.remote(match, actor, ray.put(data), 1))
            local = play_match(match, digits, cache_dir)
            assert comparable(remote) == comparable(local), match.attack.name
            assert remote.queries_used == 0 and remote.threat_model == match.attack.name
            assert remote.stolen_accuracy > 0.85
    finally:
        ray.kill(actor)
