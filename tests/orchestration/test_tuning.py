"""Tuning: protection is the worst case over the suite, the utility floor keeps settings off the
frontier, bad studies fail with clear messages, and a killed study resumes to exactly the
configured trials with nothing duplicated or left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from arena.data import DataSplits
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from orchestration.config import ConfigError
from orchestration.frontier import best_at_floor, dominated_by_frontier, study_view
from orchestration.study import distributions
from orchestration.trial_scores import Scores, score
from orchestration.trial_tracking import record_trial
from orchestration.tune_config import load_tune_config, parse_tune_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "tuning" / "digits_smoke.yaml"


def smoke_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SMOKE.read_text())
    return data


def problems_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_tune_config(raw)
    return caught.value.problems


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "tuning").glob("*.yaml")), ids=str)
def test_shipped_tuning_configs_are_valid(path: Path) -> None:
    config = load_tune_config(path)
    assert config.space() and config.attacks


# ---- bad studies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"search_space": {"delta": {"low": 1, "high": 2}}}, "search_space.delta", "no tunable"),
        ({"search_space": {"beta": {"low": 2.0, "high": 1.0}}}, "search_space.beta", "below high"),
        ({"search_space": {"beta": {"low": 0.0, "high": 1.0}}}, "search_space.beta", "low > 0"),
        ({"search_space": {"beta": {"options": [1, 2]}}}, "search_space.beta", "numeric"),
        (
            {"search_space": {"beta": {"low": 0.0, "high": 1.0, "log": False}}},
            "search_space.beta",
            "must be a finite number > 0",
        ),
        ({"defense": "none"}, "defense", "nothing left to tune"),
        ({"fixed": {"beta": 1.0, "gamma": 0.1}}, "defense", "nothing left to tune"),
        ({"fixed": {"nope": 1}}, "fixed", "no parameter 'nope'"),
        ({"defense": "shield"}, "defense", "unknown defense 'shield'"),
        ({"defaults": [{"beta": -1}]}, "defaults.0", "beta must be"),
        ({"storage": "foo://x"}, "storage", "unsupported storage URL scheme 'foo'"),
        ({"storage": "sqlite://x.db"}, "storage", "three slashes"),
        ({"utility_floor": 2}, "utility_floor", "less than or equal to 1"),
        ({"trials": 0}, "trials", "greater than 0"),
    ],
)
def test_bad_studies_fail_at_load_with_the_path_and_a_reason(
    change: dict[str, Any], where: str, says: str
) -> None:
    found = problems_of({**smoke_dict(), **change})
    assert any(path == where and says in message for path, message in found), found


def test_categorical_overrides_take_options_only() -> None:
    raw = {**smoke_dict(), "defense": "mad", "defaults": []}
    raw["search_space"] = {"argmax_preserving": {"low": 0}}
    assert any("categorical" in m for _, m in problems_of(raw))
    raw["search_space"] = {"argmax_preserving": {"options": [True]}}
    space = parse_tune_config(raw).space()
    assert space["argmax_preserving"].options == (True,)  # type: ignore[union-attr]


def test_journal_path_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    found = problems_of({**smoke_dict(), "storage": str(blocker / "study.journal")})
    assert found == [
        (
            "storage",
            f"journal path {str(blocker / 'study.journal')!r}: {blocker} is not a directory",
        )
    ]


def test_bad_tune_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad_range = {"beta": {"low": 2.0, "high": 1.0}}
    bad.write_text(
        yaml.safe_dump({**smoke_dict(), "storage": "foo://x", "search_space": bad_range})
    )
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", "tune", str(bad), "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "storage: unsupported storage URL scheme" in result.stderr
    assert "search_space.beta: low (2.0) must be below high (1.0)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "optuna").exists()


def test_frontier_of_a_missing_study_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", "frontier", "nope", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no study storage at" in result.stderr and "Traceback" not in result.stderr


def test_frontier_opens_the_journal_tune_writes_and_repairs_it_the_same_way(tmp_path: Path) -> None:
    """``arena frontier STUDY --home H`` reads the journal ``arena tune`` writes under H, through
    the same opener: a torn last record a killed driver left is cut off (kept in ``.torn``)."""
    from orchestration.journal_repair import TORN_SUFFIX
    from orchestration.study import open_storage, open_study

    config = parse_tune_config({**smoke_dict(), "name": "torn"})
    study = open_study(config, open_storage(config, tmp_path))
    dists = distributions(config.space())
    for utility in (0.9, 0.95):
        record_trial(study, study.ask(dists), scores(utility, 0.3, 0.89), 0.89, None)
    journal = tmp_path / "optuna" / "torn.journal"
    whole = journal.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    journal.write_bytes(whole[: len(whole) - len(last) // 2])  # the last tell, half written
    command = ["frontier", "torn", "--home", str(tmp_path), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "orchestration", *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "torn: 1 trials" in result.stdout
    assert journal.with_name(journal.name + TORN_SUFFIX).is_file()
    assert journal.read_bytes().endswith(b"\n")


# ---- objectives and the frontier --------------------------------------------------------------


def test_protection_is_the_worst_case_over_the_suite(
    digits_data: DataSplits, victim_cache: Path
) -> None:
    """Adding a stronger attacker to the suite lowers protection to 1 - its stolen accuracy."""
    victim = VictimSpec(dataset="digits", arch="mlp", epochs=20)
    defense = (PluginSpec(name="rounding", params={"decimals": 1}),)

    def played(epochs: int) -> Any:
        attack = PluginSpec(name="knockoff", params={"epochs": epochs})
        spec = MatchSpec(victim=victim, defenses=defense, attack=attack, budget=300, seed=0)
        return play_match(spec, digits_data, victim_cache)

    weak, strong = played(1), played(20)
    assert strong.stolen_accuracy > weak.stolen_accuracy + 0.1
    alone = score([weak], weak.victim_accuracy, 0.01, None)
    both = score([weak, strong], weak.victim_accuracy, 0.01, None)
    assert alone.protection == pytest.approx(1 - weak.stolen_accuracy)
    assert both.protection == pytest.approx(1 - strong.stolen_accuracy)
    assert both.protection < alone.protection
    assert both.strongest_attack == strong.attack
    assert both.stolen_accuracy == {
        weak.attack: weak.stolen_accuracy,
        strong.attack: strong.stolen_accuracy,
    }


def scores(utility: float, protection: float, floor: float) -> Scores:
    return Scores(
        utility,
        protection,
        None,
        "knockoff",
        {"knockoff": 1 - protection},
        {"knockoff": 0.5},
        feasible=utility >= floor,
    )


def test_settings_below_the_utility_floor_never_reach_the_frontier() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    floor = 0.89  # victim 0.90, one point allowed
    study.set_user_attr("victim_accuracy", 0.90)
    dists = distributions({"beta": parse_tune_config(smoke_dict()).space()["beta"]})
    points = [(0.90, 0.10), (0.895, 0.20), (0.80, 0.90), (0.60, 0.95), (0.88, 0.15)]
    for utility, protection in points:
        trial = study.ask(dists)
        record_trial(study, trial, scores(utility, protection, floor), floor, None)
    view = study_view(study)
    front = {(p.utility, p.protection) for p in view.frontier}
    # the infeasible (0.80, 0.90) and (0.60, 0.95) dominate nothing: the feasible front is kept
    assert front == {(0.90, 0.10), (0.895, 0.20)}
    assert all(p.feasible for p in view.frontier)
    assert {(p.utility, p.protection) for p in view.points if not p.feasible} == {
        (0.80, 0.90),
        (0.60, 0.95),
        (0.88, 0.15),
    }
    assert best_at_floor([view], 0.01) is not None
    assert best_at_floor([view], 0.01)[1].protection == 0.20  # type: ignore[index]
    # the dashboard cannot show Optuna 5's named constraints; the user attributes carry them
    shown = [(t.user_attrs["feasible"], t.user_attrs["utility_floor"]) for t in study.trials]
    assert [f for f, _ in shown] == [True, True, False, False, False]
    assert shown[2][1] == pytest.approx(0.09) and shown[0][1] == pytest.approx(-0.01)


def test_defaults_are_compared_with_the_frontier() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    dists = distributions({"beta": parse_tune_config(smoke_dict()).space()["beta"]})
    record_trial(study, study.ask(dists), scores(0.90, 0.30, 0.89), 0.89, None)
    study.set_user_attr(
        "literature_defaults",
        [
            {"params": {"beta": 1.0}, **scores(0.90, 0.20, 0.89).__dict__},
            {"params": {"beta": 2.0}, **scores(0.90, 0.40, 0.89).__dict__},
        ],
    )
    view = study_view(study)
    beaten, unbeaten = view.defaults
    assert dominated_by_frontier(view, beaten) is not None
    assert dominated_by_frontier(view, unbeaten) is None


# ---- the study end to end: kill -9 and resume -------------------------------------------------


def test_D1_killed_study_resumes_to_exactly_the_configured_trials(tmp_path: Path) -> None:
    """D1: SIGKILL the driver once a trial has finished; the same command finishes the study with
    exactly ``trials`` COMPLETE trials, none RUNNING, every interrupted trial retried with the
    same parameters, one MLflow child run per trial, and the frontier plot logged."""
    from mlflow.tracking import MlflowClient

    from orchestration.tracking import default_tracking_uri

    home = tmp_path / "home"
    env = dict(os.environ, ARENA_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "orchestration", "tune", str(SMOKE)]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.lstrip().startswith("trial "):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    journal = home / "optuna" / "digits-reverse-sigmoid-smoke.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    before = optuna.load_study(study_name="digits-reverse-sigmoid-smoke", storage=storage)
    complete_before = [t for t in before.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 1 <= len(complete_before) < 4
    # the kill lands while the other trial in flight (concurrency 2) is RUNNING
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in before.trials)

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="digits-reverse-sigmoid-smoke", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert optuna.trial.TrialState.RUNNING not in states
    space = set(parse_tune_config(smoke_dict()).space())
    # a kill inside ``ask`` can leave a trial with part of its parameters: it never ran
    failed = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.FAIL and space <= set(t.params)
    ]
    retried = {t.user_attrs["retry_of"]: t for t in study.trials if "retry_of" in t.user_attrs}
    assert failed, "no trial was interrupted: the kill did not land mid-trial"
    assert {t.number for t in failed} == set(retried)
    for trial in failed:
        assert retried[trial.number].params == trial.params
        assert retried[trial.number].state == optuna.trial.TrialState.COMPLETE
    assert len(study.user_attrs["literature_defaults"]) == 1

    client = MlflowClient(default_tracking_uri(home))
    experiment = client.get_experiment_by_name("digits-tuning-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("arena.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("arena.kind") == "trial"]
    numbers = [r.data.tags["arena.trial"] for r in trials if "arena.trial" in r.data.tags]
    assert sorted(numbers) == sorted(
        {str(t.number) for t in study.trials if t.state.name == "COMPLETE"}
    )
    assert len([r for r in trials if r.data.tags.get("arena.default") == "true"]) == 1
    assert [p.info.status for p in parents] == ["FINISHED"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"frontier.png", "frontier.html", "frontier.md", "frontier.json"} <= artifacts


def test_a_trial_killed_while_its_parameters_were_written_is_not_retried_half_set() -> None:
    """D1: the driver can die inside ``ask`` after some parameters are stored: the reaper fails
    that trial and retries only complete settings (or an enqueued setting's fixed parameters)."""
    from orchestration.study import reap_interrupted

    study = optuna.create_study(directions=["maximize", "maximize"])
    dists = distributions(parse_tune_config(smoke_dict()).space())
    names = list(dists)
    full = study.ask(dists)  # RUNNING with every parameter
    half = study.ask({names[0]: dists[names[0]]})  # RUNNING, killed half-way through ``ask``
    study.enqueue_trial({n: full.params[n] for n in names}, user_attrs={"mark": 1})
    queued = study.ask({names[0]: dists[names[0]]})  # an enqueued setting, also cut short
    assert reap_interrupted(study, names) == 3
    states = {t.number: t.state for t in study.trials}
    assert states[full.number] == states[half.number] == optuna.trial.TrialState.FAIL
    assert states[queued.number] == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [full.number, queued.number]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert all(set(t.system_attrs["fixed_params"]) == set(names) for t in waiting)


def test_a_repeated_setting_reuses_theevaluated_twin() -> None:
    """Evaluation is deterministic, so a sampler's repeat of a finished setting is not replayed."""
    from orchestration.study import evaluated_twin

    study = optuna.create_study(directions=["maximize", "maximize"])
    dists = distributions({"beta": parse_tune_config(smoke_dict()).space()["beta"]})
    study.enqueue_trial({"beta": 0.5})
    record_trial(study, study.ask(dists), scores(0.90, 0.30, 0.89), 0.89, None)
    study.enqueue_trial({"beta": 0.5})
    repeat = study.ask(dists)
    twin = evaluated_twin(study, repeat)
    assert twin is not None and twin.number == 0
    study.enqueue_trial({"beta": 0.7})
    assert evaluated_twin(study, study.ask(dists)) is None


def test_unusable_storage_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    from orchestration.study import StudyError, open_storage

    config = parse_tune_config({**smoke_dict(), "storage": "sqlite:////no/such/dir/study.db"})
    with pytest.raises(StudyError) as caught:
        open_storage(config, tmp_path)
    message = str(caught.value)
    assert message.startswith("cannot open Optuna storage 'sqlite:////no/such/dir/study.db'")
    assert "\n" not in message


def test_a_default_seeded_into_the_study_does_not_dominate_itself() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    dists = distributions({"beta": parse_tune_config(smoke_dict()).space()["beta"]})
    study.enqueue_trial({"beta": 1.0})
    record_trial(study, study.ask(dists), scores(0.90, 0.30, 0.89), 0.89, None)
    study.set_user_attr(
        "literature_defaults", [{"params": {"beta": 1.0}, **scores(0.90, 0.30, 0.89).__dict__}]
    )
    view = study_view(study)
    assert [p.params for p in view.frontier] == [{"beta": 1.0}]
    assert dominated_by_frontier(view, view.defaults[0]) is None
