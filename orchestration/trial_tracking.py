"""Tuning trials and the frontier in MLflow: one child run per evaluated setting under the study's
parent run (logged after the trial is told to Optuna, and on start for any COMPLETE trial missing
from MLflow), and the frontier's plots and table on the parent."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestration.frontier import (
    SCORES_ATTR,
    StudyView,
    dominated_by_frontier,
    frontier_table,
    plot_html,
    plot_png,
)
from orchestration.study import CONSTRAINT, DEFAULT_MARK, FALSE_POSITIVES
from orchestration.tracking import Tracker
from orchestration.trial_scores import Scores
from orchestration.tune_config import TuneConfig

TRIAL_TAG = "arena.trial"
FEASIBLE_ATTR = "feasible"
"""a trial's user attribute: whether it keeps its constraints (shown by optuna-dashboard)"""


def trial_tags(trial: optuna.Trial | FrozenTrial) -> dict[str, str]:
    tags = {TRIAL_TAG: str(trial.number)}
    if trial.user_attrs.get(DEFAULT_MARK):
        tags["arena.default"] = "true"
    return tags


def record_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    scores: Scores,
    floor: float,
    cost: str | None,
    max_false_positives: float | None = None,
) -> None:
    """Tell Optuna a trial's objectives, with the utility floor as its constraint (feasible,
    i.e. <= 0, when utility >= ``floor``), the benign false-positive bound as a second one when
    set, and its scores kept for the frontier."""
    trial.set_constraint(CONSTRAINT, floor - scores.utility)
    trial.set_user_attr(CONSTRAINT, floor - scores.utility)
    if max_false_positives is not None:
        rate = scores.false_positive_rate or 0.0
        trial.set_constraint(FALSE_POSITIVES, rate - max_false_positives)
        trial.set_user_attr(FALSE_POSITIVES, rate - max_false_positives)
    # optuna-dashboard 0.21 shows no named constraint (Optuna 5's set_constraint) but lists user
    # attributes on a trial's page: the same values and the verdict, readable there
    trial.set_user_attr(FEASIBLE_ATTR, scores.feasible)
    trial.set_user_attr(SCORES_ATTR, asdict(scores))
    study.tell(trial, scores.values(cost is not None))


def log_trial(
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
    if scores.false_positive_rate is not None:
        metrics["benign_false_positive_rate"] = scores.false_positive_rate
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


def log_missing_trials(
    tracker: Tracker, parent: str, study: optuna.Study, config: TuneConfig
) -> None:
    """COMPLETE trials a killed driver told Optuna about but never logged to MLflow."""
    logged = tracker.child_tags(parent, TRIAL_TAG)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if str(trial.number) in logged or SCORES_ATTR not in trial.user_attrs:
            continue
        scores = Scores(**trial.user_attrs[SCORES_ATTR])
        label = f"trial {trial.number}"
        log_trial(tracker, parent, config, label, dict(trial.params), scores, trial_tags(trial))


def log_frontier(
    tracker: Tracker, parent: str, view: StudyView, config: TuneConfig, folder: Path
) -> dict[str, Path]:
    """The Pareto table, the frontier plot (PNG and HTML) and the comparison with each default
    on the study's parent run; the files also stay in ``folder`` for the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "png": plot_png([view], folder / "frontier.png", config.utility_floor),
        "html": plot_html([view], folder / "frontier.html", config.utility_floor),
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
