"""Run a tournament config the way ``arena tournament`` does, for the benchmarks built on one:
Ray, MLflow under ``ARENA_HOME`` (or ``MLFLOW_TRACKING_URI``), victims cached there, and a rerun
only plays the matches that are missing."""

from __future__ import annotations

import os
import time

from rich.console import Console

from arena.data import arena_home
from orchestration.config import TournamentConfig
from orchestration.tournament import TournamentOutcome, run_tournament
from orchestration.tracking import Tracker, default_tracking_uri


def run_config(config: TournamentConfig, console: Console) -> tuple[TournamentOutcome, float]:
    """Play the config's missing matches, printing one line per match; the wall seconds."""
    home = arena_home()
    tracker = Tracker(
        os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(home),
        config.tracking.experiment,
        artifact_root=home / "mlartifacts",
    )
    start = time.perf_counter()
    outcome = run_tournament(
        config,
        tracker,
        cache_dir=home / "victims",
        on_result=lambda spec, r: console.print(f"  {spec.key()} {type(r).__name__}"),
    )
    return outcome, time.perf_counter() - start
