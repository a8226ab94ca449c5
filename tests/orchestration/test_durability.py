"""Durable experiments (RELIABILITY D2, D3, D4): concurrent workers on a storage the driver
created, a journal a killed writer left torn or locked, and MLflow run status on every way a
driver can end. Workers and drivers are real processes; storages are real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.distributions import distribution_to_json
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray_testkit import live_project_actors

from arena.data import DataSplits
from arena.victims import load_or_train
from orchestration.config import parse_config
from orchestration.journal_repair import (
    STALE_LOCK_S,
    TORN_SUFFIX,
    lock_path,
    release_stale_lock,
    repair_journal,
)
from orchestration.study import distributions, open_storage, open_study, reap_interrupted
from orchestration.tracking import (
    DRIVER_TAG,
    MATCH_KEY_TAG,
    REAPED_TAG,
    Tracker,
    default_tracking_uri,
    driver_identity,
)
from orchestration.tune_config import TuneConfig, parse_tune_config

REPO = Path(__file__).resolve().parents[2]
TUNE_SMOKE = REPO / "configs" / "tuning" / "digits_smoke.yaml"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    """A real process running ``code`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tune_config(tmp_path: Path, name: str, **change: Any) -> TuneConfig:
    raw: dict[str, Any] = yaml.safe_load(TUNE_SMOKE.read_text())
    journal = tmp_path / "optuna" / f"{name}.journal"
    return parse_tune_config({**raw, "name": name, "storage": str(journal), **change})


def _journal(config: TuneConfig) -> Path:
    assert config.storage is not None
    return Path(config.storage)


def _fresh(journal: Path, name: str) -> optuna.Study:
    """The study as a new process reads it (plain Optuna, no repair)."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


# ---- D2: eight worker processes on a storage the driver just created ------------------------

WORKER = r"""
import json, sys, time
from pathlib import Path

import optuna
from optuna.distributions import json_to_distribution

from orchestration.journal_repair import open_journal

journal, name, index, dists_json, go = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)
dists = {k: json_to_distribution(v) for k, v in json.loads(dists_json).items()}
print("READY", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
# every worker opens the storage at the same moment
study = optuna.load_study(
    study_name=name,
    storage=open_journal(Path(journal)),
    sampler=optuna.samplers.TPESampler(seed=int(index)),  # one stream per worker
)
trial = study.ask(dists)
study.tell(trial, [0.5 + int(index) / 100, 0.5])
print("DONE", trial.number, flush=True)
"""


def test_D2_eight_concurrent_workers_on_fresh_storage(tmp_path: Path) -> None:
    """Fact 3: on a fresh SQLite store 7 of 8 concurrent workers crashed. The driver creates the
    study (and the Tracker the MLflow DB) before fanning out; then 8 worker processes open the
    journal at the same moment and each runs one ask/tell."""
    config = _tune_config(tmp_path, "d2-fresh")
    journal = _journal(config)
    assert not journal.exists()
    study = open_study(config, open_storage(config, tmp_path))
    assert journal.is_file() and study.trials == []

    # MLflow side: constructing the driver's Tracker creates the SQLite DB, its schema and the
    # experiment, before any worker or Ray task exists (the CLI builds it before Ray starts)
    Tracker(default_tracking_uri(tmp_path), "d2", artifact_root=tmp_path / "artifacts")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
        names = {row[0] for row in db.execute("select name from experiments")}
    assert {"experiments", "runs", "alembic_version"} <= tables and "d2" in names

    dists = json.dumps(
        {k: distribution_to_json(v) for k, v in distributions(config.space()).items()}
    )
    go = tmp_path / "go"
    workers = [_python(WORKER, str(journal), config.name, str(i), dists, str(go)) for i in range(8)]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "READY", worker.communicate()[1]
    go.touch()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    failed = [
        (w.returncode, err[-2000:])
        for w, (_, err) in zip(workers, outputs, strict=True)
        if w.returncode
    ]
    assert failed == []  # 8/8 succeeded

    trials = _fresh(journal, config.name).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert len({t.number for t in trials}) == 8
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    told = sorted(int(out.split()[-1]) for out, _ in outputs)
    assert told == sorted(t.number for t in trials)


# ---- D3: a torn journal tail and a stale lock -------------------------------------------------


def _tear_last_record(journal: Path) -> bytes:
    """Cut the last record in half, as a writer killed in the middle of its append leaves it;
    return the bytes that stayed on disk."""
    data = journal.read_bytes()
    last = data.splitlines(keepends=True)[-1]
    kept = last[: len(last) // 2]
    journal.write_bytes(data[: len(data) - len(last)] + kept)
    return kept


def test_D3_torn_journal_tail_is_repaired_and_the_study_resumes(tmp_path: Path) -> None:
    """The driver dies while telling Optuna a trial's result: the record is half written. Plain
    Optuna then fails at the next ``ask``; opening the storage the arena way cuts the torn bytes
    off (kept in ``.torn``), the interrupted trial is retried with its parameters and the study
    completes to the configured number of trials."""
    config = _tune_config(tmp_path, "d3-torn", trials=5)
    journal = _journal(config)
    study = open_study(config, open_storage(config, tmp_path))
    dists = distributions(config.space())
    for i in range(4):
        trial = study.ask(dists)
        study.tell(trial, [0.5 + i / 100, 0.5])
    interrupted = study.trials[-1]
    torn = _tear_last_record(journal)
    assert _fresh(journal, config.name).trials[-1].state == TrialState.RUNNING

    # without the repair: the next append is glued onto the torn record and ``ask`` fails
    plain = tmp_path / "plain.journal"
    shutil.copy(journal, plain)
    with pytest.raises(Exception):  # noqa: B017 (Optuna raises an AttributeError)
        _fresh(plain, config.name).ask(dists)
    # ... and the record glued onto the torn one is kept by the repair
    assert repair_journal(plain) == len(torn)
    assert len(_fresh(plain, config.name).trials) == 5

    storage = open_storage(config, tmp_path)
    assert (journal.parent / (journal.name + TORN_SUFFIX)).read_bytes() == torn + b"\n"
    assert journal.read_bytes().endswith(b"\n")
    study = open_study(config, storage)
    assert reap_interrupted(study, list(dists)) == 1

    def complete() -> int:
        return len(study.get_trials(states=(TrialState.COMPLETE,)))

    while complete() < config.trials:
        trial = study.ask(dists)
        study.tell(trial, [0.6, 0.6])
    assert repair_journal(journal) == 0  # nothing torn any more

    again = _fresh(journal, config.name)
    states = [t.state for t in again.trials]
    assert states.count(TrialState.COMPLETE) == config.trials
    assert TrialState.RUNNING not in states
    (retry,) = [t for t in again.trials if t.user_attrs.get("retry_of") == interrupted.number]
    assert retry.params == interrupted.params and retry.state == TrialState.COMPLETE


HOLDER = r"""
import sys, time
from optuna.storages.journal import JournalFileSymlinkLock

journal, hold = sys.argv[1], float(sys.argv[2])
lock = JournalFileSymlinkLock(journal)
lock.acquire()
print("LOCKED", flush=True)
time.sleep(hold)
lock.release()
print("RELEASED", flush=True)
time.sleep(600)
"""


def _hold_lock(journal: Path, seconds: float) -> subprocess.Popen[str]:
    """A real writer process holding the journal's lock for ``seconds``."""
    holder = _python(HOLDER, str(journal), str(seconds))
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "LOCKED", holder.communicate()[1]
    return holder


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_D3_stale_lock_is_released_on_start(tmp_path: Path) -> None:
    """A writer SIGKILLed while holding the journal lock leaves it behind, and Optuna alone only
    forces it after 30 s without journal writes (measured: 30.0 s). Opening the storage removes a
    lock unchanged for STALE_LOCK_S; a lock a live writer releases is never taken from it."""
    config = _tune_config(tmp_path, "d3-lock")
    journal = _journal(config)
    dists = distributions(config.space())
    study = open_study(config, open_storage(config, tmp_path))
    study.tell(study.ask(dists), [0.5, 0.5])
    lock = lock_path(journal)

    # a live writer holding the lock briefly: left alone, and done waiting when it lets go
    live = _hold_lock(journal, 0.5)
    started = time.monotonic()
    assert release_stale_lock(journal) is None
    assert time.monotonic() - started < STALE_LOCK_S / 2
    assert live.stdout is not None and live.stdout.readline().strip() == "RELEASED"
    _kill(live)

    # killed a minute ago (the lock's time set back by 60 s): removed at once on start
    dead = _hold_lock(journal, 600)
    _kill(dead)
    assert os.path.lexists(lock)
    past = time.time() - 60
    os.utime(lock, (past, past), follow_symlinks=False)
    started = time.monotonic()
    study = open_study(config, open_storage(config, tmp_path))
    study.tell(study.ask(dists), [0.5, 0.5])
    assert time.monotonic() - started < 5
    assert not os.path.lexists(lock)

    # killed just now, the driver restarted at once: writes resume after STALE_LOCK_S
    dead = _hold_lock(journal, 600)
    _kill(dead)
    started = time.monotonic()
    study = open_study(config, open_storage(config, tmp_path))
    study.tell(study.ask(dists), [0.5, 0.5])
    waited = time.monotonic() - started
    assert waited < STALE_LOCK_S + 5 < 30
    assert not os.path.lexists(lock)
    assert [t.state for t in _fresh(journal, config.name).trials] == [TrialState.COMPLETE] * 3
    assert not list(journal.parent.glob("*.stale"))


# ---- D4: MLflow run status on every exit path -------------------------------------------------

DEAD_DRIVER = r"""
import os, signal, sys
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from orchestration.tracking import DRIVER_TAG, KIND_TAG, Tracker, driver_identity

tracker = Tracker(sys.argv[1], "d4-reap")
parent = tracker.open_tournament("dead", {})
tags = {MLFLOW_PARENT_RUN_ID: parent, KIND_TAG: "match", DRIVER_TAG: driver_identity()}
child = tracker.client.create_run(tracker.experiment_id, tags=tags).info.run_id
print(parent, child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies between creating a run and closing it
"""


def test_D4_runs_of_dead_drivers_are_reaped_and_others_left_alone(tmp_path: Path) -> None:
    """Opening a parent run marks KILLED every RUNNING run of the experiment whose driver was on
    this host and is gone (pid gone, or the pid now names a process started at another time);
    runs of live drivers, of other hosts and untagged runs keep their status."""
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "d4-reap")
    dead = _python(DEAD_DRIVER, uri)
    out, err = dead.communicate(timeout=120)
    assert dead.returncode == -signal.SIGKILL, err
    dead_parent, dead_child = out.split()

    client = tracker.client
    host, pid, start = driver_identity().split(":")

    def running(tag: str | None) -> str:
        tags = {} if tag is None else {DRIVER_TAG: tag}
        return str(client.create_run(tracker.experiment_id, tags=tags).info.run_id)

    live = running(driver_identity())
    reused_pid = running(f"{host}:{pid}:{int(start) - 1}")
    elsewhere = running("another-host:1:1")
    untagged = running(None)
    assert client.get_run(dead_parent).info.status == "RUNNING"  # fact 5: SIGKILL lies

    new_parent = tracker.open_tournament("next", {})
    status = {run: client.get_run(run).info.status for run in (dead_parent, dead_child)}
    assert status == {dead_parent: "KILLED", dead_child: "KILLED"}
    assert client.get_run(reused_pid).info.status == "KILLED"
    for run in (dead_parent, dead_child, reused_pid):
        assert "which is gone" in client.get_run(run).data.tags[REAPED_TAG]
    for run in (live, elsewhere, untagged, new_parent):
        assert client.get_run(run).info.status == "RUNNING"
        assert REAPED_TAG not in client.get_run(run).data.tags
    assert client.get_run(new_parent).data.tags[DRIVER_TAG] == driver_identity()


DRIVER = r"""
import json, signal, sys, time
from pathlib import Path

from mlflow.tracking import MlflowClient
from arena.home import ArenaHome
from orchestration.cli import _interrupt
from orchestration.config import parse_config
from orchestration.tournament import run_tournament
from orchestration.tracking import Tracker, default_tracking_uri

mode, raw, home, cache, address = sys.argv[1:]
home = Path(home)
signal.signal(signal.SIGTERM, _interrupt)  # as `arena tournament` does
uri = default_tracking_uri(home)
tracker = Tracker(uri, "d4", artifact_root=home / "artifacts")


def on_start(pending, skipped):
    # the parent is open: what MLflow says about every run of the experiment at this moment
    runs = MlflowClient(uri).search_runs([tracker.experiment_id])
    snapshot = {r.info.run_id: [r.info.status, r.data.tags] for r in runs}
    (home / f"{mode}.start.json").write_text(json.dumps(snapshot))


def on_result(spec, outcome):
    print("RESULT", spec.key(), flush=True)
    if mode == "raise":
        raise RuntimeError("the driver fails after its first match")
    if mode in ("sigint", "sigterm", "sigkill"):
        time.sleep(300)  # the rest of the tournament is playing; wait for the signal here


outcome = run_tournament(
    parse_config(json.loads(raw)),
    tracker,
    ArenaHome.at(home, victims=Path(cache)),
    address=address,
    on_result=on_result,
    on_start=on_start,
)
print("DONE", outcome.parent_run_id, flush=True)
"""


def _tournament_runs(uri: str, name: str) -> tuple[Any, list[Any]]:
    """The parent run of tournament ``name`` and its children."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("d4")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("arena.tournament") == name]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    return parent, children


@pytest.mark.ray
def test_D4_run_status_on_every_exit_path(
    ray_session: None,
    tmp_path: Path,
    smoke_config_dict: dict[str, Any],
    digits_data: DataSplits,
) -> None:
    """Real tournament drivers (processes on the session's Ray) end after their first match by
    (a) an exception, (b) Ctrl-C, (c) SIGTERM, (d) SIGKILL and a rerun: a parent run is never
    FINISHED unless its tournament finished; after (d) the rerun reconciles the orphan before
    it plays anything and ends with one FINISHED run per match."""
    address = ray.get_runtime_context().gcs_address
    home, cache = tmp_path / "home", tmp_path / "victims"
    raw = smoke_config_dict
    raw["defenses"] = ["none"]
    raw["attacks"] = [{"name": a, "params": {"epochs": 1}} for a in ("knockoff", "copycat")]
    raw["budgets"] = [100]
    # a match takes both CPUs: each driver starts as few Ray workers as possible
    raw["ray"] = {**raw.get("ray", {}), "cpus_per_match": 2}
    # the victim and the tracking DB exist before the drivers start (they run side by side)
    load_or_train(parse_config(raw).matches()[0].victim, digits_data, cache)
    uri = default_tracking_uri(home)
    Tracker(uri, "d4")

    def start(mode: str, name: str) -> subprocess.Popen[str]:
        config = json.dumps({**raw, "name": name})
        return _python(DRIVER, mode, config, str(home), str(cache), address)

    def first_result(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("RESULT"):
                return
        raise AssertionError(proc.communicate()[1][-3000:])

    # the driver raises after its first match, or gets a signal while its second is playing
    ends = {"raise": None, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
    ends["sigkill"] = signal.SIGKILL
    procs = {mode: start(mode, f"d4-{mode}") for mode in ends}
    for mode, proc in procs.items():
        first_result(proc)
        if (signum := ends[mode]) is not None:
            proc.send_signal(signum)
    for mode, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        parent, children = _tournament_runs(uri, f"d4-{mode}")
        assert [c.info.status for c in children] == ["FINISHED"], err[-3000:]
        if mode == "sigkill":
            assert proc.returncode == -signal.SIGKILL
            assert parent.info.status == "RUNNING"  # fact 5: what SIGKILL leaves
            continue
        if mode == "raise":
            assert proc.returncode == 1 and "RuntimeError: the driver fails" in err, err[-3000:]
        assert proc.returncode != 0
        assert parent.info.status == ("FAILED" if mode == "raise" else "KILLED"), err[-3000:]
        assert REAPED_TAG not in parent.data.tags  # closed by its own driver

    # (d) the rerun: the orphan is KILLED (and reopened) before anything plays
    killed, before = _tournament_runs(uri, "d4-sigkill")
    rerun = start("rerun", "d4-sigkill")
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0 and "DONE" in out, err[-3000:]
    snapshot = json.loads((home / "rerun.start.json").read_text())
    status, tags = snapshot[killed.info.run_id]
    assert status == "RUNNING" and "which is gone" in tags[REAPED_TAG]  # reaped, then reopened
    assert tags[DRIVER_TAG] != killed.data.tags[DRIVER_TAG]
    assert [s for s, _ in snapshot.values()].count("RUNNING") == 1  # no orphan left live

    parent, children = _tournament_runs(uri, "d4-sigkill")
    assert parent.info.run_id == killed.info.run_id and parent.info.status == "FINISHED"
    keys = [c.data.tags[MATCH_KEY_TAG] for c in children]
    assert len(keys) == len(set(keys)) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.info.run_id for c in before} < {c.info.run_id for c in children}
    for mode, status in (("raise", "FAILED"), ("sigint", "KILLED"), ("sigterm", "KILLED")):
        assert _tournament_runs(uri, f"d4-{mode}")[0].info.status == status  # left alone
    assert live_project_actors() == []
