"""Run a tournament on Ray: every missing match of a config played through one
:class:`~orchestration.runtime.MatchRuntime`, the driver the single MLflow writer. Matches
already FINISHED in MLflow are skipped, so rerunning the same command only plays what is missing.
With ``tracking.log_models`` the victims and each match's substitute are logged as MLflow models,
each substitute as its match finishes (the driver never holds them all).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.home import ArenaHome
from arena.record import MatchResult, result_json
from arena.specs import MatchSpec, VictimSpec
from orchestration.budget_curves import (
    BudgetCurve,
    budget_curves,
    curve_metrics,
    curves_dict,
    curves_markdown,
)
from orchestration.config import TournamentConfig
from orchestration.leaderboard import (
    LeaderboardRow,
    axes_markdown,
    build_leaderboard,
    compact_markdown,
    has_more_axes,
    leaderboard_dict,
    markdown_table,
    protection_utility_plot,
)
from orchestration.runtime import Finished, MatchFailure, MatchRuntime, Outcome
from orchestration.tracking import Tracker


@dataclass
class TournamentOutcome:
    """What a tournament run produced."""

    parent_run_id: str
    results: list[MatchResult]
    leaderboard: list[LeaderboardRow]
    curves: list[BudgetCurve]
    played: int
    skipped: int
    failures: list[MatchFailure] = field(default_factory=list)
    victims: dict[str, TrainedVictimInfo] = field(default_factory=dict)
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class TrainedVictimInfo:
    spec: VictimSpec
    test_accuracy: float
    train_seconds: float
    from_cache: bool


ProgressHook = Callable[[MatchSpec, Outcome], None]


def run_tournament(
    config: TournamentConfig,
    tracker: Tracker,
    home: ArenaHome,
    address: str | None = None,
    on_result: ProgressHook | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> TournamentOutcome:
    """Play every missing match of ``config`` on Ray and log everything to MLflow."""
    started = time.perf_counter()
    specs = config.matches()
    parent = tracker.open_tournament(config.name, config.model_dump(mode="json"))
    failures: list[MatchFailure] = []
    victims: dict[str, TrainedVictimInfo] = {}
    status = "FAILED"
    try:  # from here on every exit gives the parent run its true status
        results: dict[str, MatchResult] = tracker.finished_results(parent)
        pending = [s for s in specs if s.key() not in results]
        if on_start:
            on_start(len(pending), len(specs) - len(pending))
        log_models = config.tracking.log_models
        with MatchRuntime(
            config.ray,
            home,
            parent,
            address,
            plugins=config.plugins,
            download=config.download,
            keep_substitutes=log_models,
        ) as runtime:
            runtime.ensure(pending)
            victims = {
                k: TrainedVictimInfo(v.spec, v.test_accuracy, v.train_seconds, v.from_cache)
                for k, v in runtime.victims.items()
            }
            if log_models:
                _log_victims(tracker, parent, runtime)
            for spec in pending:
                runtime.submit(spec)
            for done in runtime.as_finished():
                if isinstance(done.outcome, MatchResult):
                    _log_match(tracker, parent, runtime, done, done.outcome)
                    results[done.spec.key()] = done.outcome
                else:
                    tracker.log_failure(parent, done.spec, done.outcome.reason)
                    failures.append(done.outcome)
                if on_result:
                    on_result(done.spec, done.outcome)
        ordered = [results[s.key()] for s in specs if s.key() in results]
        board = build_leaderboard(ordered)
        curves = budget_curves(ordered, config.queries_to_x)
        _log_summary(
            tracker, parent, config, ordered, board, curves, len(pending), victims, started
        )
        status = "FINISHED" if not failures else "FAILED"
        return TournamentOutcome(
            parent_run_id=parent,
            results=ordered,
            leaderboard=board,
            curves=curves,
            played=len(pending) - len(failures),
            skipped=len(specs) - len(pending),
            failures=failures,
            victims=victims,
            wall_seconds=time.perf_counter() - started,
        )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(parent, status)


MODEL_EXAMPLES = 8
"""test images a logged model's signature is inferred from"""


def victim_model_name(victim_key: str) -> str:
    """A victim's MLflow model name on the parent run: one per victim, so several never clash."""
    return f"victim-{victim_key}"


def _log_victims(tracker: Tracker, parent: str, runtime: MatchRuntime) -> None:
    """Each victim this run serves, as trained, on the parent run (once: a rerun skips those
    already there)."""
    logged = tracker.model_names(parent)
    for key, victim in runtime.victims.items():
        name = victim_model_name(key)
        if name not in logged:
            examples = runtime.dataset(victim.spec.dataset).test.x[:MODEL_EXAMPLES]
            tracker.log_model(parent, victim.model, name, examples)


def _log_match(
    tracker: Tracker, parent: str, runtime: MatchRuntime, done: Finished, result: MatchResult
) -> None:
    """A finished match's child run, with its substitute when the runtime kept it."""
    examples = None
    if done.substitute is not None:
        examples = runtime.dataset(done.spec.victim.dataset).test.x[:MODEL_EXAMPLES]
    tracker.log_match(parent, done.spec, result, done.substitute, examples)


def _log_summary(
    tracker: Tracker,
    parent: str,
    config: TournamentConfig,
    results: list[MatchResult],
    board: list[LeaderboardRow],
    curves: list[BudgetCurve],
    played: int,
    victims: dict[str, TrainedVictimInfo],
    started: float,
) -> None:
    metrics: dict[str, float] = {
        "matches": len(results),
        "matches_played_this_run": played,
        "wall_seconds_this_run": time.perf_counter() - started,
        **curve_metrics(curves),
    }
    curve_files: dict[str, str | dict[str, Any]] = (
        {
            "budget_curves.md": curves_markdown(curves, config.queries_to_x),
            "budget_curves.json": curves_dict(curves, config.queries_to_x),
        }
        if curves
        else {}
    )
    for info in victims.values():
        metrics[f"victim_accuracy.{info.spec.key()}"] = info.test_accuracy
        if not info.from_cache:
            metrics[f"victim_train_seconds.{info.spec.key()}"] = info.train_seconds
    with tempfile.TemporaryDirectory() as tmp:
        plot = protection_utility_plot(
            board, Path(tmp) / "protection_vs_utility.png", f"{config.name}: protection vs utility"
        )
        tracker.log_summary(
            parent,
            metrics,
            {
                "leaderboard.md": markdown_table(board),
                "leaderboard_compact.md": compact_markdown(board),
                **({"leaderboard_axes.md": axes_markdown(board)} if has_more_axes(board) else {}),
                "leaderboard.json": leaderboard_dict(board),
                "matches.json": result_json(results),
                **curve_files,
                "plot": plot,
            },
        )
