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

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from arena.defenses import Choice, FloatRange, IntRange, ParamSpace
from arena.errors import ArenaError
from arena.home import ArenaHome
from arena.record import MatchResult
from arena.strongest import strongest, threats
from orchestration.frontier import (
    DEFAULTS_ATTR,
    SCORES_ATTR,
    StudyView,
    dominated_by_frontier,
    frontier_table,
    plot_html,
    plot_png,
    study_view,
)
from orchestration.runtime import MatchRuntime
from orchestration.study_storage import open_storage_at, storage_location
from orchestration.tracking import Tracker
from orchestration.tune_config import TuneConfig

TRIAL_TAG = "arena.trial"
DEFAULT_MARK = "literature_default"
CONSTRAINT = "utility_floor"


class StudyError(ArenaError):
    """A study that cannot be opened or run (bad storage, a study of another shape)."""


@dataclass(frozen=True)
class Scores:
    """What one defense setting achieved against the whole suite."""

    utility: float
    protection: float
    """1 - the strongest attacker's stolen accuracy"""
    cost: float | None
    strongest_attack: str
    stolen_accuracy: dict[str, float]
    fidelity: dict[str, float]
    feasible: bool
    """utility within the floor of the undefended victim"""

    def values(self, with_cost: bool) -> list[float]:
        values = [self.utility, self.protection]
        return [*values, self.cost if self.cost is not None else math.nan] if with_cost else values


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


def distributions(space: dict[str, ParamSpace]) -> dict[str, BaseDistribution]:
    """Optuna distributions for a defense's declared (plain-data) search space."""
    out: dict[str, BaseDistribution] = {}
    for name, kind in space.items():
        if isinstance(kind, Choice):
            out[name] = CategoricalDistribution(list(kind.options))
        elif isinstance(kind, IntRange):
            out[name] = IntDistribution(kind.low, kind.high)
        else:
            assert isinstance(kind, FloatRange)
            out[name] = FloatDistribution(kind.low, kind.high, log=kind.log)
    return out


def score(
    results: Sequence[MatchResult],
    victim_accuracy: float,
    floor: float,
    cost: str | None,
    utility_metric: str = "accuracy",
) -> Scores:
    """Worst case over the suite: protection from the attacker that stole the most.

    Utility is the defended test accuracy, or with ``utility_metric="goodput"`` (model zoos) the
    share of benign requests served within their targets; ``victim_accuracy`` is then the
    undefended baseline of that metric (:func:`utility_baseline`)."""
    if not results:
        raise ValueError("a trial needs at least one match result")
    stolen = {r.attack: r.stolen_accuracy for r in results}
    top = strongest(threats(results, per_match=True))
    utility = min(_utility(r, utility_metric) for r in results)
    cost_value = None
    if cost == "latency":
        cost_value = max(r.latency_ratio for r in results)
    elif cost == "kl":
        cost_value = max(r.test_perturbation_kl for r in results)
    return Scores(
        utility=utility,
        protection=1.0 - top.stolen_accuracy,
        cost=cost_value,
        strongest_attack=top.attack,
        stolen_accuracy=stolen,
        fidelity={r.attack: r.fidelity for r in results},
        feasible=utility >= victim_accuracy - floor - 1e-12,
    )


def _utility(result: MatchResult, metric: str) -> float:
    if metric != "goodput":
        return result.utility
    if result.goodput is None:
        raise StudyError(f"goodput is measured on model zoos only, not on {result.victim_arch}")
    return result.goodput


def utility_baseline(config: TuneConfig, victim_accuracy: float) -> float:
    """The undefended value of the utility objective the floor is measured from: the victim's
    accuracy, or for goodput 1 (an undefended zoo serves every benign request in its targets)."""
    return 1.0 if config.utility == "goodput" else victim_accuracy


def open_storage(config: TuneConfig, home: Path) -> BaseStorage:
    """The study's storage (:func:`storage_location`: by default a journal under
    ``home/optuna``), its folder created; a journal a killed writer left with a stale lock or a
    torn last record is repaired first, or the study could not be resumed (D3)."""
    try:
        where = storage_location(config.name, config.storage, home)
        if isinstance(where, Path):
            where.parent.mkdir(parents=True, exist_ok=True)
        return open_storage_at(where)
    except Exception as exc:  # optuna/sqlalchemy raise many types for a bad URL or path
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StudyError(f"cannot open Optuna storage {config.storage!r}: {first}") from None


def open_study(config: TuneConfig, storage: BaseStorage) -> optuna.Study:
    directions: list[StudyDirection] = [StudyDirection.MAXIMIZE, StudyDirection.MAXIMIZE]
    if config.cost:
        directions.append(StudyDirection.MINIMIZE)
    # multi-objective TPE: random start-up trials, then a model of the good region; constraints
    # come from each trial (Trial.set_constraint), which TPE and best_trials both read; the
    # constant liar keeps concurrent trials from being asked for the same point
    sampler = optuna.samplers.TPESampler(
        seed=config.sampler_seed,
        n_startup_trials=max(4, config.trials // 3),
        multivariate=True,
        constant_liar=True,
    )
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            directions=directions,
            sampler=sampler,
            load_if_exists=True,
        )
    except ValueError as exc:
        raise StudyError(f"study {config.name!r}: {exc}") from None
    if len(study.directions) != len(directions):
        raise StudyError(
            f"study {config.name!r} in this storage has {len(study.directions)} objectives, the "
            f"config asks for {len(directions)}: use another study name or storage"
        )
    return study


def reap_interrupted(study: optuna.Study, names: Sequence[str]) -> int:
    """Trials left RUNNING by a killed driver: mark them FAIL and enqueue their parameters, so
    the rerun evaluates them again. The driver is the study's only owner, so at start-up every
    RUNNING trial is stale. A kill inside ``ask`` can leave a trial whose parameters were only
    partly written: it never ran, so it is failed without a retry (a fresh trial replaces it),
    unless it was an enqueued setting, whose fixed parameters are retried."""
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        params = _interrupted_params(trial, names)
        study.tell(trial.number, state=TrialState.FAIL)
        if params is not None:
            attrs = {**trial.user_attrs, "retry_of": trial.number}
            study.enqueue_trial(params, user_attrs=attrs)
        reaped += 1
    return reaped


def _interrupted_params(
    trial: optuna.trial.FrozenTrial, names: Sequence[str]
) -> dict[str, Any] | None:
    """The complete setting an interrupted trial stood for, or None if it was never fixed."""
    if set(names) <= set(trial.params):
        return dict(trial.params)
    fixed = trial.system_attrs.get("fixed_params")
    if isinstance(fixed, dict) and set(names) <= set(fixed):
        return dict(fixed)
    return None


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
        with MatchRuntime(config.ray, home, parent, address) as runtime:
            victim = runtime.ensure_victim(config.victim)
            floor = config.utility_floor
            baseline = utility_baseline(config, victim.test_accuracy)
            study.set_user_attr("victim_accuracy", baseline)
            study.set_user_attr("utility_metric", config.utility)
            _log_missing_trials(tracker, parent, study, config)
            todo_defaults = _seed_defaults(study, config, dists)

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
                scores = (
                    None
                    if job.failures
                    else score(job.results, baseline, floor, config.cost, config.utility)
                )
                _finish(study, tracker, parent, config, job, scores, baseline)
                if on_trial:
                    on_trial(job.label, job.params, scores)

        view = study_view(study)
        artifacts = _log_frontier(tracker, parent, view, config, home.studies / config.name)
        status = "FINISHED"
        return StudyOutcome(study, parent, view, floor, evaluated, reaped, artifacts)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(parent, status)


def _seed_defaults(
    study: optuna.Study, config: TuneConfig, dists: dict[str, BaseDistribution]
) -> list[dict[str, Any]]:
    """Defaults inside the search space seed the study as its first trials (the sampler learns
    from them, and the frontier is never worse than the literature); returns the others, which
    are evaluated beside the study, less those already evaluated."""
    seeded = [d for d in config.defaults if _inside(d, dists)]
    if not study.trials:
        for params in seeded:
            study.enqueue_trial(params, user_attrs={DEFAULT_MARK: True})
    done_defaults = {
        json.dumps(d["params"], sort_keys=True) for d in study.user_attrs.get(DEFAULTS_ATTR, [])
    }
    return [
        p
        for p in config.defaults
        if p not in seeded and json.dumps(p, sort_keys=True) not in done_defaults
    ]


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
        _remember_default(study, job.params, scores)
        _log(tracker, parent, config, job.label, job.params, scores, {"arena.default": "true"})
        return
    if scores is None:
        job.trial.set_user_attr("failures", job.failures)
        study.tell(job.trial, state=TrialState.FAIL)
        return
    if job.trial.user_attrs.get(DEFAULT_MARK):
        _remember_default(study, job.params, scores)
    record_trial(study, job.trial, scores, victim_accuracy - config.utility_floor, config.cost)
    _log(tracker, parent, config, job.label, job.params, scores, _trial_tags(job.trial))


def _inside(params: dict[str, Any], dists: dict[str, BaseDistribution]) -> bool:
    """Whether a setting names exactly the searched parameters, each within its range."""
    if set(params) != set(dists):
        return False
    for name, value in params.items():
        dist = dists[name]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return False
        elif isinstance(dist, FloatDistribution | IntDistribution):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if not dist.low <= value <= dist.high:
                return False
    return True


def evaluated_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """A COMPLETE trial with exactly these parameters: evaluation is deterministic (seeded
    training, common random numbers), so its scores are this trial's too."""
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.params == trial.params and SCORES_ATTR in other.user_attrs:
            return other
    return None


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
    record_trial(study, trial, scores, victim_accuracy - config.utility_floor, config.cost)
    tags = {TRIAL_TAG: str(trial.number), "arena.same_as": str(twin.number)}
    _log(tracker, parent, config, f"trial {trial.number}", dict(trial.params), scores, tags)


def _remember_default(study: optuna.Study, params: dict[str, Any], scores: Scores) -> None:
    """Keep a literature default's scores in the study (replacing an earlier entry of the same
    setting, so a retried default is listed once)."""
    kept = [d for d in study.user_attrs.get(DEFAULTS_ATTR, []) if d["params"] != params]
    study.set_user_attr(DEFAULTS_ATTR, [*kept, {"params": params, **asdict(scores)}])


def _trial_tags(trial: optuna.Trial | FrozenTrial) -> dict[str, str]:
    tags = {TRIAL_TAG: str(trial.number)}
    if trial.user_attrs.get(DEFAULT_MARK):
        tags["arena.default"] = "true"
    return tags


def record_trial(
    study: optuna.Study, trial: optuna.Trial, scores: Scores, floor: float, cost: str | None
) -> None:
    """Tell Optuna a trial's objectives, with the utility floor as its constraint (feasible,
    i.e. <= 0, when utility >= ``floor``) and its scores kept for the frontier."""
    trial.set_constraint(CONSTRAINT, floor - scores.utility)
    trial.set_user_attr(SCORES_ATTR, asdict(scores))
    study.tell(trial, scores.values(cost is not None))


def _log(
    tracker: Tracker,
    parent: str,
    config: TuneConfig,
    label: str,
    params: dict[str, Any],
    scores: Scores,
    tags: dict[str, str],
) -> None:
    metrics = {
        "utility": scores.utility,
        "protection": scores.protection,
        "feasible": float(scores.feasible),
    }
    if scores.cost is not None:
        metrics[f"cost_{config.cost}"] = scores.cost
    metrics |= {f"stolen_accuracy.{_metric(a)}": v for a, v in scores.stolen_accuracy.items()}
    metrics |= {f"fidelity.{_metric(a)}": v for a, v in scores.fidelity.items()}
    tags = {
        **tags,
        "arena.defense": config.defense,
        "arena.strongest_attack": scores.strongest_attack,
    }
    tracker.log_trial(parent, label, params, metrics, tags, {"params": params, **asdict(scores)})


def _metric(label: str) -> str:
    """An attack label (``knockoff(epochs=5)``) as an MLflow metric name."""
    return re.sub(r"[^\w\-. :/]", "_", label).strip("_")


def _log_missing_trials(
    tracker: Tracker, parent: str, study: optuna.Study, config: TuneConfig
) -> None:
    """COMPLETE trials a killed driver told Optuna about but never logged to MLflow."""
    logged = tracker.child_tags(parent, TRIAL_TAG)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if str(trial.number) in logged or SCORES_ATTR not in trial.user_attrs:
            continue
        scores = Scores(**trial.user_attrs[SCORES_ATTR])
        label = f"trial {trial.number}"
        _log(tracker, parent, config, label, dict(trial.params), scores, _trial_tags(trial))


def _log_frontier(
    tracker: Tracker, parent: str, view: StudyView, config: TuneConfig, folder: Path
) -> dict[str, Path]:
    """The Pareto table, the frontier plot (PNG and HTML) and the comparison with each default
    on the study's parent run; the files also stay in ``folder`` for the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "png": plot_png([view], folder / "frontier.png", config.utility_floor),
        "html": plot_html([view], folder / "frontier.html"),
        "table": folder / "frontier.md",
    }
    files["table"].write_text(frontier_table(view))
    comparison = {
        d.label: (beaten.label if (beaten := dominated_by_frontier(view, d)) else None)
        for d in view.defaults
    }
    metrics = {"frontier_size": float(len(view.frontier)), "trials": float(len(view.points))}
    if view.frontier:
        metrics["best_feasible_protection"] = max(p.protection for p in view.frontier)
    tracker.log_summary(
        parent,
        metrics,
        {
            **{name: path for name, path in files.items()},
            "frontier.json": {
                "frontier": [asdict(p) for p in view.frontier],
                "defaults": [asdict(p) for p in view.defaults],
                "defaults_dominated_by": comparison,
                "victim_accuracy": view.victim_accuracy,
                "utility_floor": config.utility_floor,
            },
        },
    )
    return files
