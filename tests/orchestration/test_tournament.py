"""A real (tiny) tournament on the session's Ray with a real MLflow SQLite store: parent and child
runs, leaderboard and plot artifacts, rerun skips finished matches (D5), a failing match is
recorded FAILED with its reason while the others finish (F2), and no actor is left (F4)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray_testkit import live_project_actors

from arena.home import ArenaHome
from orchestration.config import parse_config
from orchestration.tournament import run_tournament
from orchestration.tracking import MATCH_KEY_TAG, Tracker, default_tracking_uri

pytestmark = pytest.mark.ray


def _small(raw: dict[str, Any]) -> dict[str, Any]:
    raw["victims"][0]["epochs"] = 10
    raw["defenses"] = raw["defenses"][:3]
    raw["attacks"] = [{"name": a["name"], "params": {"epochs": 3}} for a in raw["attacks"]]
    raw["budgets"] = [100, 200]
    return raw


def _children(client: MlflowClient, experiment_id: str, parent: str) -> list[Any]:
    return list(
        client.search_runs(
            [experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'"
        )
    )


def test_D5_tournament_logs_runs_and_resumes_without_duplicates(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    config = parse_config(_small(smoke_config_dict))
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "t-resume", artifact_root=tmp_path / "artifacts")
    cache = tmp_path / "victims"

    first = run_tournament(config, tracker, ArenaHome.at(tmp_path, victims=cache))
    expected = len(config.matches())
    assert expected == 3 * 2 * 2
    assert first.played == expected and first.skipped == 0 and not first.failures

    client = MlflowClient(uri)
    parent_id = first.parent_run_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    # the parent's aggregates stay apart from the children's per-match metrics
    assert not parent.data.metrics
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # runs view
    assert tracker.runs_url().endswith(
        f"/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=arena-matches"
    )
    children = _children(client, tracker.experiment_id, first.parent_run_id)
    assert len(children) == expected
    assert all(c.info.status == "FINISHED" for c in children)
    child = children[0]
    assert {"stolen_accuracy", "fidelity", "utility", "perturbation_kl"} <= set(child.data.metrics)
    assert "attack.name" in child.data.params and "budget" in child.data.params
    by_key = {r.match_key: r for r in first.results}
    for c in children:  # a child run lasts as long as its match did (to the millisecond)
        seconds = by_key[c.data.tags[MATCH_KEY_TAG]].match_seconds
        assert abs((c.info.end_time - c.info.start_time) - seconds * 1000) <= 1
    artifacts = {a.path for a in client.list_artifacts(first.parent_run_id)}
    assert {"leaderboard.md", "leaderboard.json", "protection_vs_utility.png"} <= artifacts
    assert {"leaderboard_compact.md", "summary.json"} <= artifacts

    board = first.leaderboard
    assert len(board) == 3 and [row.rank for row in board] == [1, 2, 3]
    for row in board:  # protection is 1 - the strongest attacker's stolen accuracy
        mine = [r for r in first.results if r.defense == row.defense]
        assert row.stolen_accuracy == max(r.stolen_accuracy for r in mine)
        assert row.protection == pytest.approx(1 - row.stolen_accuracy)
    assert board[0].protection >= board[-1].protection
    assert live_project_actors() == []  # F4: victim services are gone

    every_run = {r.info.run_id for r in client.search_runs([tracker.experiment_id])}
    second = run_tournament(config, tracker, ArenaHome.at(tmp_path, victims=cache))
    assert second.played == 0 and second.skipped == expected
    assert second.parent_run_id == first.parent_run_id
    # D5: the rerun created no run at all, and there is exactly one run per match key
    assert {r.info.run_id for r in client.search_runs([tracker.experiment_id])} == every_run
    keys = [c.data.tags[MATCH_KEY_TAG] for c in _children(client, tracker.experiment_id, parent_id)]
    assert sorted(keys) == sorted(spec.key() for spec in config.matches())
    # the record read back from MLflow is the record that was logged
    for r in second.results:
        assert r == by_key[r.match_key]


def test_F2_failing_match_is_recorded_failed_and_others_finish(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    raw = _small(smoke_config_dict)
    raw["defenses"] = ["none"]
    raw["budgets"] = [100]
    # lenet5 needs >= 12 px images: a substitute of that arch fails inside the match on 8x8 digits
    raw["attacks"] = [
        {"name": "knockoff", "params": {"epochs": 2}},
        {"name": "copycat", "params": {"epochs": 2}},
    ]
    config = parse_config(raw)
    broken = config.model_copy(update={"substitute_arch": "lenet5"})
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "t-fail", artifact_root=tmp_path / "artifacts")
    outcome = run_tournament(broken, tracker, ArenaHome.at(tmp_path))
    assert len(outcome.failures) == 2 and outcome.played == 0
    assert "12x12" in outcome.failures[0].reason
    client = MlflowClient(uri)
    runs = _children(client, tracker.experiment_id, outcome.parent_run_id)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]
    assert all("arena.failure" in r.data.tags for r in runs)
    assert client.get_run(outcome.parent_run_id).info.status == "FAILED"
    assert live_project_actors() == []

    # the fixed config (a separate tournament name) plays both matches
    fixed = parse_config({**raw, "name": "digits-fixed"})
    good = run_tournament(fixed, tracker, ArenaHome.at(tmp_path))
    assert good.played == 2 and not good.failures
    keys = [
        r.data.tags[MATCH_KEY_TAG]
        for r in _children(client, tracker.experiment_id, good.parent_run_id)
    ]
    assert len(keys) == len(set(keys)) == 2
    summary = json.loads(
        (Path(client.download_artifacts(good.parent_run_id, "leaderboard.json"))).read_text()
    )
    assert summary["rows"][0]["defense"] == "none"
    assert ray.is_initialized()  # the tournament did not shut down a Ray it did not start


def _alive_actor_ids() -> set[str]:
    """Ids of every live actor in the cluster, from Ray's actor table (``ray.util.state`` needs
    the dashboard, which the session's Ray leaves out)."""
    table: dict[str, Any] = ray._private.state.actors()
    return {actor_id for actor_id, info in table.items() if info["State"] == "ALIVE"}


def _settled_cpus(seconds: float = 10.0) -> tuple[float, float]:
    """(available, total) CPUs once every CPU is free again, or when ``seconds`` have passed
    (actors and workers release their CPUs asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        total = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        available = float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        if available == total or time.monotonic() > deadline:
            return available, total
        time.sleep(0.2)


def test_F4_after_a_tournament_all_cpus_are_free_and_no_project_actor_is_alive(
    ray_session: None, tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    raw = _small(smoke_config_dict)
    raw["defenses"] = raw["defenses"][:2]  # none, reverse_sigmoid: two victim services
    raw["attacks"] = raw["attacks"][:1]
    raw["budgets"] = [100]
    config = parse_config(raw)
    alive_before = _alive_actor_ids()
    tracker = Tracker(default_tracking_uri(tmp_path), "t-f4", artifact_root=tmp_path / "a")
    outcome = run_tournament(config, tracker, ArenaHome.at(tmp_path))
    assert outcome.played == 2 and not outcome.failures
    start = time.monotonic()
    available, total = _settled_cpus()
    settle = time.monotonic() - start
    print(f"F4: {available:g} of {total:g} CPUs free {settle:.1f} s after the tournament")
    assert total > 0 and available == total
    assert live_project_actors() == []
    assert _alive_actor_ids() - alive_before == set(), "the tournament left actors alive"
    assert ray.is_initialized()  # and it did not shut down the session's Ray


def test_H6_quoted_name_plays_end_to_end_and_a_rerun_skips(
    ray_session: None, tmp_path: Path, cache_dir: Path, smoke_config_dict: dict[str, Any]
) -> None:
    """``o'brien smoke`` once broke the MLflow search that finds a tournament's parent run; one
    match, then the rerun reopens the same parent and plays nothing."""
    raw = _small(smoke_config_dict)
    raw.update(name="o'brien smoke", defenses=["none"], budgets=[100])
    raw["attacks"] = [{"name": "knockoff", "params": {"epochs": 2}}]
    config = parse_config(raw)
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "t-quoted", artifact_root=tmp_path / "artifacts")
    first = run_tournament(config, tracker, ArenaHome.at(tmp_path, victims=cache_dir))
    assert first.played == 1 and not first.failures
    client = MlflowClient(uri)
    before = {r.info.run_id for r in client.search_runs([tracker.experiment_id])}
    second = run_tournament(config, tracker, ArenaHome.at(tmp_path, victims=cache_dir))
    assert second.played == 0 and second.skipped == 1
    assert second.parent_run_id == first.parent_run_id
    assert {r.info.run_id for r in client.search_runs([tracker.experiment_id])} == before
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["arena.tournament"] == "o'brien smoke"
    assert parent.info.status == "FINISHED"
