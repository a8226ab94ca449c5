"""Wall time of the default tournament from a cold cache, a warm victim cache, and a rerun.

* cold: empty home (no victim cache, no MLflow store): trains the victim, plays every match;
* warm: the victim cache kept, a fresh MLflow store: plays every match again;
* rerun: the same command once more on the warm store: plays nothing.

Also records the victim's test accuracy and every match's stolen accuracy and fidelity, so the
numbers in docs/results.md can be reproduced. Usage (from the repository root)::

    python benchmarks/default_tournament.py [--config configs/fashion_mnist.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
import torch
from machine import git_commit
from rich.console import Console
from rich.table import Table

from arena.home import ArenaHome
from arena.record import comparable
from orchestration.config import load_config
from orchestration.leaderboard import markdown_table
from orchestration.tournament import TournamentOutcome, run_tournament
from orchestration.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]


def play(config_path: Path, home: Path, store: str) -> tuple[TournamentOutcome, float]:
    """One run of the tournament command's work, timed end to end (Ray start included).

    ``store`` names the MLflow SQLite file: a fresh name is a fresh store (deleting a file that
    this process's MLflow client still holds open would leave it read-only).
    """
    os.environ["ARENA_HOME"] = str(home)
    config = load_config(config_path)
    start = time.perf_counter()
    uri = f"sqlite:///{home / store}"
    tracker = Tracker(uri, config.tracking.experiment, artifact_root=home / f"{store}-artifacts")
    outcome = run_tournament(config, tracker, ArenaHome.at(home))
    return outcome, time.perf_counter() - start


def render(path: Path) -> str:
    """The docs tables of a written JSON: wall times, every match, the leaderboard."""
    report = json.loads(path.read_text())
    wall, played = report["wall_seconds"], report["played"]
    lines = [
        "| run | matches played | wall s |",
        "|---|---:|---:|",
        f"| cold (victim trained) | {played['cold']} | {wall['cold']:.0f} |",
        f"| warm (victim cached) | {played['warm']} | {wall['warm']:.0f} |",
        f"| rerun (all finished) | {played['rerun']} | {wall['rerun']:.1f} |",
        "",
        "| defense | attack | budget | stolen | second track | fidelity | utility | thief epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["matches"]:
        reference = m.get("reference_stolen_accuracy")
        recipe = json.loads(m["thief_recipe"]) if m.get("thief_recipe") else {}
        lines.append(
            f"| {m['defense']} | {m['attack']} | {m['budget']:,} | {m['stolen_accuracy']:.4f} "
            f"| {'—' if reference is None else f'{reference:.4f}'} | {m['fidelity']:.4f} "
            f"| {m['utility']:.4f} | {recipe.get('epochs', '—')} |"
        )
    victims = ", ".join(f"{v:.4f}" for v in report["victim_test_accuracy"].values())
    stamp = (
        f"_Victim test accuracy {victims}. Measured {report['date'][:16].replace('T', ' ')} UTC"
        f" at commit {report.get('commit', '?')} (`python benchmarks/default_tournament.py`)._"
    )
    return "\n".join([*lines, "", report["leaderboard_markdown"].strip(), "", stamp])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fashion_mnist.yaml")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "default_tournament.json"
    )
    parser.add_argument("--render", type=Path, help="print the docs tables of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    console = Console(width=160)
    home = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    data_dir = os.environ.get("ARENA_DATA_DIR")
    try:
        cold, cold_s = play(args.config, home, "cold.db")
        warm, warm_s = play(args.config, home, "warm.db")
        rerun, rerun_s = play(args.config, home, "warm.db")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert not ray.is_initialized()

    victims = {k: v.test_accuracy for k, v in cold.victims.items()}
    train_s = {k: v.train_seconds for k, v in cold.victims.items()}
    table = Table(title=f"{args.config.name}: wall time on {os.cpu_count()} CPUs")
    for column in ("run", "matches played", "wall s"):
        table.add_column(column, justify="right")
    table.add_row("cold (victim trained)", str(cold.played), f"{cold_s:.0f}")
    table.add_row("warm (victim cached)", str(warm.played), f"{warm_s:.0f}")
    table.add_row("rerun (all finished)", str(rerun.played), f"{rerun_s:.1f}")
    console.print(table)
    console.print(f"victim test accuracy: {victims}; training seconds: {train_s}")
    console.print(markdown_table(cold.leaderboard))
    identical = [comparable(r) for r in cold.results] == [comparable(r) for r in warm.results]
    console.print(f"cold and warm records identical apart from timings: {identical}")

    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "data_dir": data_dir,
        },
        "wall_seconds": {"cold": cold_s, "warm": warm_s, "rerun": rerun_s},
        "played": {"cold": cold.played, "warm": warm.played, "rerun": rerun.played},
        "victim_test_accuracy": victims,
        "victim_train_seconds": train_s,
        "cold_and_warm_identical": identical,
        "matches": [r.model_dump() for r in cold.results],
        "leaderboard_markdown": markdown_table(cold.leaderboard),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
