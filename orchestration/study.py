"""The Optuna study of a tuning run: its storage and shape, resuming after a killed driver, and the
literature defaults and duplicate settings it is seeded with or spared.

Resume: the storage is the source of truth. A trial left RUNNING by a killed driver is marked
FAIL and its parameters are enqueued again, so the rerun evaluates exactly what was interrupted
and the study ends with the configured number of COMPLETE trials.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
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
from arena.versions import plugin_versions
from orchestration.frontier import (
    DEFAULTS_ATTR,
    SCORES_ATTR,
)
from orchestration.study_storage import StudyError, open_storage_at, storage_location
from orchestration.trial_scores import Scores
from orchestration.tune_config import TuneConfig

DEFAULT_MARK = "literature_default"


CONSTRAINT = "utility_floor"
FALSE_POSITIVES = "false_positives"
"""the second constraint, with ``max_false_positives``: benign callers flagged beyond the bound"""


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


VERSIONS_ATTR = "plugin_versions"
"""the study attribute holding the versions of the plug-ins its trials were scored with"""


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
    check_versions(study, config.name, plugin_versions(config.specs_for({})))
    with warnings.catch_warnings():  # experimental since Optuna 3.2, opted into knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(config))
    return study


def metric_names(config: TuneConfig) -> list[str]:
    """The objectives' names, in order, so optuna-dashboard labels its plots with them rather
    than "Objective 0/1"."""
    protection = "protection" if config.axis == "prevention" else config.axis
    return ["utility", protection, *([config.cost] if config.cost else [])]


def check_versions(study: optuna.Study, name: str, versions: dict[str, int]) -> None:
    """A study's trials were scored by the plug-in versions it was created with (kept in the
    study); resuming it after a bump would mix scores of old and new code on one frontier, so
    that is refused, naming what changed. A study from before versions existed adopts them."""
    stored = study.user_attrs.get(VERSIONS_ATTR)
    if stored is None:
        study.set_user_attr(VERSIONS_ATTR, versions)
        return
    changed = sorted(
        f"{plugin} v{stored.get(plugin, 1)} -> v{version}"
        for plugin, version in versions.items()
        if stored.get(plugin, 1) != version
    )
    if changed:
        raise StudyError(
            f"study {name!r} was scored with other plug-in versions ({'; '.join(changed)}): its "
            "trials are of the older code; give the study a new name, or delete it from the "
            "storage"
        )


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


def seed_defaults(
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


def remember_default(study: optuna.Study, params: dict[str, Any], scores: Scores) -> None:
    """Keep a literature default's scores in the study (replacing an earlier entry of the same
    setting, so a retried default is listed once)."""
    kept = [d for d in study.user_attrs.get(DEFAULTS_ATTR, []) if d["params"] != params]
    study.set_user_attr(DEFAULTS_ATTR, [*kept, {"params": params, **asdict(scores)}])
