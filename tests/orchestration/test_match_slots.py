"""The runtime plays at most as many matches at once as the cluster has match slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arena.home import ArenaHome
from arena.record import MatchResult
from orchestration.config import RaySettings, parse_config
from orchestration.runtime import MatchRuntime

pytestmark = pytest.mark.ray


def _specs(smoke_config_dict: dict[str, Any]) -> list[Any]:
    smoke_config_dict["defenses"] = ["none", "label_only"]
    smoke_config_dict["attacks"] = [{"name": "knockoff", "params": {"epochs": 1}}]
    return parse_config(smoke_config_dict).matches()


def test_a_cap_of_one_plays_one_match_at_a_time_and_all_of_them(
    ray_session: None, tmp_path: Path, cache_dir: Path, smoke_config_dict: dict[str, Any]
) -> None:
    specs = _specs(smoke_config_dict)
    assert len(specs) == 4
    home = ArenaHome.at(tmp_path / "home", victims=cache_dir)
    with MatchRuntime(RaySettings(matches_in_flight=1), home, "slots") as runtime:
        for spec in specs:
            runtime.submit(spec)
        assert (runtime.playing, runtime.running) == (1, 4)
        finished = []
        while runtime.running:
            finished.append(runtime.next_finished())
            assert runtime.playing <= 1
    assert sorted(f.spec.key() for f in finished) == sorted(s.key() for s in specs)
    assert all(isinstance(f.outcome, MatchResult) for f in finished)


def test_without_a_cap_the_slots_are_the_cluster_cpus_over_the_match_cpus(
    ray_session: None, tmp_path: Path, cache_dir: Path, smoke_config_dict: dict[str, Any]
) -> None:
    """The session's Ray has 2 CPUs: 2 slots at 1 CPU a match, 1 at 2 (never 0)."""
    home = ArenaHome.at(tmp_path / "home", victims=cache_dir)
    caps = []
    for cpus in (1, 2, 3):
        with MatchRuntime(RaySettings(cpus_per_match=cpus), home, "slots") as runtime:
            caps.append(runtime.in_flight_cap())
    assert caps == [2, 1, 1]
    specs = _specs(smoke_config_dict)
    with MatchRuntime(RaySettings(), home, "slots") as runtime:
        for spec in specs:
            runtime.submit(spec)
        assert runtime.playing == 2
        results = [runtime.next_finished() for _ in specs]
    assert all(isinstance(f.outcome, MatchResult) for f in results)
