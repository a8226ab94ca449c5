"""Run a tournament config the way ``arena tournament`` does, for the benchmarks built on one:
Ray, MLflow under ``ARENA_HOME`` (or ``MLFLOW_TRACKING_URI``), victims cached there, and a rerun
only plays the matches that are missing."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import command_short, git_commit
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


def run_report(config: Path, outcome: TournamentOutcome, wall: float) -> dict[str, Any]:
    """What every config benchmark's JSON starts with: the command, commit and date, the config,
    what this run played, and every match record."""
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "command_short": command_short(),
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": str(config),
        "wall_seconds_this_run": wall,
        "played": outcome.played,
        "skipped": outcome.skipped,
        "failures": [f.match_key for f in outcome.failures],
        "matches": [r.model_dump() for r in outcome.results],
    }


def write_report(
    report: dict[str, Any], out: Path, outcome: TournamentOutcome, console: Console
) -> int:
    """Write the JSON; the exit status: 1 when a match failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 1 if outcome.failures else 0
