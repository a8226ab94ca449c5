"""Run a tournament config the way ``arena tournament`` does, for the benchmarks built on one:
Ray, MLflow under ``ARENA_HOME`` (or ``MLFLOW_TRACKING_URI``), victims cached there, and a rerun
only plays the matches that are missing."""

from __future__ import annotations

import os
import time

from rich.console import Console

from arena.home import ArenaHome
from orchestration.config import TournamentConfig
from orchestration.tournament import TournamentOutcome, run_tournament
from orchestration.tracking import Tracker


def run_config(config: TournamentConfig, console: Console) -> tuple[TournamentOutcome, float]:
    """Play the config's missing matches, printing one line per match; the wall seconds."""
    home = ArenaHome.from_environment()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = Tracker.for_home(home, uri, config.tracking.experiment)
    start = time.perf_counter()
    outcome = run_tournament(
        config,
        tracker,
        home,
        on_result=lambda spec, r: console.print(f"  {spec.key()} {type(r).__name__}"),
    )
    return outcome, time.perf_counter() - start
