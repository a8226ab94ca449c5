"""Optuna tunes one defense's hyperparameters against the worst case of an attack suite.

The driver owns the study (ask/tell) and is its only writer; each trial's matches run on Ray like
a tournament's (one victim-service actor per trial, one task per attack), several trials at once.
Objectives: utility (maximise) and protection = 1 - the strongest attacker's stolen accuracy
(maximise), optionally a cost (minimise). Settings that cost more utility than the floor allows
are infeasible (an Optuna constraint), so they never enter the frontier.

Resume: the storage is the source of truth. A trial left RUNNING by a killed driver is marked
FAIL and its parameters are enqueued again, so the rerun evaluates exactly what was interrupted
and the study ends with the configured number of COMPLETE trials. Trials are logged to MLflow
after they are told to Optuna, and any COMPLETE trial missing from MLflow is logged on start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from arena.home import ArenaHome
from arena.record import MatchResult
from arena.versions import versioned_victim
from orchestration.frontier import (
    SCORES_ATTR,
    StudyView,
    study_view,
)
from orchestration.runtime import MatchRuntime
from orchestration.study import (
    DEFAULT_MARK,
    distributions,
    evaluated_twin,
    open_storage,
    open_study,
    reap_interrupted,
    remember_default,
    seed_defaults,
)
from orchestration.study_storage import StudyError
from orchestration.tracking import Tracker
from orchestration.trial_scores import Scores, score_trial, utility_baseline
from orchestration.trial_tracking import (
    TRIAL_TAG,
    log_frontier,
    log_missing_trials,
    log_trial,
    record_trial,
    trial_tags,
)
from orchestration.tune_config import TuneConfig


@dataclass
class StudyOutcome:
    """A finished (or resumed-and-finished) study."""

    study: optuna.Study
    parent_run_id: str
    view: StudyView
    """trials, the feasible frontier and the evaluated literature defaults"""
    floor: float
    evaluated_now: int
    """settings evaluated by this run (the rest came from the storage)"""
    reaped: int
    """trials a killed run had left RUNNING, now retried"""
    artifacts: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Job:
    """One defense setting being evaluated: an Optuna trial or a literature default."""

    label: str
    params: dict[str, Any]
    trial: optuna.Trial | None
    waiting: int = 0
    """matches still running"""
    results: list[MatchResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


TrialHook = Callable[[str, dict[str, Any], Scores | None], None]


def run_study(
    config: TuneConfig,
    tracker: Tracker,
    home: ArenaHome,
    address: str | None = None,
    on_trial: TrialHook | None = None,
) -> StudyOutcome:
    """Run (or resume) the study until it has ``config.trials`` COMPLETE trials and every
    literature default is evaluated; log everything to MLflow; return the frontier."""
    storage = open_storage(config, home.root)
    study = open_study(config, storage)
    space = config.space()
    reaped = reap_interrupted(study, list(space))
    dists = distributions(space)
    parent = tracker.open_parent("study", config.name, config.model_dump(mode="json"))
    status = "FAILED"
    evaluated = 0
    try:
        with MatchRuntime(
            config.ray, home, parent, address, plugins=config.plugins, download=config.download
        ) as runtime:
            victim = runtime.ensure_victim(versioned_victim(config.victim))
            floor = config.utility_floor
            baseline = utility_baseline(config, victim.test_accuracy)
            study.set_user_attr("victim_accuracy", baseline)
            study.set_user_attr("utility_metric", config.utility)
            log_missing_trials(tracker, parent, study, config)
            todo_defaults = seed_defaults(study, config, dists)

            def complete() -> int:
                return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

            in_flight: list[_Job] = []
            attempts = 0

            def launch(job: _Job) -> None:
                for spec in config.specs_for(job.params):
                    runtime.submit(spec, label=job.label)
                    job.waiting += 1
                in_flight.append(job)

            while True:
                while len(in_flight) < config.concurrency:
                    if todo_defaults:
                        params = todo_defaults.pop(0)
                        launch(_Job(f"default {params}", params, None))
                    elif complete() + sum(j.trial is not None for j in in_flight) < config.trials:
                        if attempts >= 2 * config.trials:
                            raise StudyError(f"{attempts} trials failed or were attempted")
                        trial = study.ask(dists)
                        attempts += 1
                        if (twin := evaluated_twin(study, trial)) is not None:
                            _reuse(study, tracker, parent, config, trial, twin, baseline)
                            continue
                        launch(_Job(f"trial {trial.number}", dict(trial.params), trial))
                    else:
                        break
                if not in_flight:
                    break
                done = runtime.next_finished()
                job = next(j for j in in_flight if j.label == done.label)
                job.waiting -= 1
                if isinstance(done.outcome, MatchResult):
                    job.results.append(done.outcome)
                else:
                    reason = done.outcome.reason.splitlines()[0]
                    job.failures.append(f"{done.spec.attack.name}: {reason}")
                if job.waiting:
                    continue
                in_flight.remove(job)
                runtime.stop_service(job.label)
                evaluated += 1
                scores = None if job.failures else score_trial(config, job.results, baseline, floor)
                _finish(study, tracker, parent, config, job, scores, baseline)
                if on_trial:
                    on_trial(job.label, job.params, scores)

        view = study_view(study)
        artifacts = log_frontier(tracker, parent, view, config, home.studies / config.name)
        status = "FINISHED"
        return StudyOutcome(study, parent, view, floor, evaluated, reaped, artifacts)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(parent, status)


def _finish(
    study: optuna.Study,
    tracker: Tracker,
    parent: str,
    config: TuneConfig,
    job: _Job,
    scores: Scores | None,
    victim_accuracy: float,
) -> None:
    """Tell Optuna first (the storage is the source of truth), then log to MLflow."""
    if job.trial is None:
        if scores is None:
            raise StudyError(f"literature default {job.params} failed: {'; '.join(job.failures)}")
        remember_default(study, job.params, scores)
        log_trial(tracker, parent, config, job.label, job.params, scores, {"arena.default": "true"})
        return
    if scores is None:
        job.trial.set_user_attr("failures", job.failures)
        study.tell(job.trial, state=TrialState.FAIL)
        return
    if job.trial.user_attrs.get(DEFAULT_MARK):
        remember_default(study, job.params, scores)
    floor = victim_accuracy - config.utility_floor
    record_trial(study, job.trial, scores, floor, config.cost, config.max_false_positives)
    log_trial(tracker, parent, config, job.label, job.params, scores, trial_tags(job.trial))


def _reuse(
    study: optuna.Study,
    tracker: Tracker,
    parent: str,
    config: TuneConfig,
    trial: optuna.Trial,
    twin: FrozenTrial,
    victim_accuracy: float,
) -> None:
    scores = Scores(**twin.user_attrs[SCORES_ATTR])
    trial.set_user_attr("same_as", twin.number)
    floor = victim_accuracy - config.utility_floor
    record_trial(study, trial, scores, floor, config.cost, config.max_false_positives)
    tags = {TRIAL_TAG: str(trial.number), "arena.same_as": str(twin.number)}
    log_trial(tracker, parent, config, f"trial {trial.number}", dict(trial.params), scores, tags)
