"""Tuning on the other axes of protection: the detection studies of PRADA and of the D-ADD-like
detector, and the cost study of proof of work.

Each config is run (or resumed: finished trials come from the Optuna storage) through the same
code as ``arena tune``, with Ray, MLflow and the journals under ``ARENA_HOME``. The JSON keeps,
per study, every trial's scores (utility, the axis's figure, benign false-positive rate), the
feasible frontier and the literature defaults; ``--render`` prints the docs section.

Usage (from the repository root)::

    python benchmarks/axis_studies.py [--configs FILE ...] [--out FILE]
    python benchmarks/axis_studies.py --render FILE     # the docs tables
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import command_short, git_commit
from rich.console import Console

from arena.home import ArenaHome
from orchestration.escaping import markdown_cell
from orchestration.frontier import Point, StudyView, frontier_table
from orchestration.tracking import Tracker
from orchestration.tune_config import load_tune_config
from orchestration.tuning import run_study

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    REPO / "configs" / "tuning" / "prada_detection.yaml",
    REPO / "configs" / "tuning" / "query_distribution_detection.yaml",
    REPO / "configs" / "tuning" / "proof_of_work_cost.yaml",
]


def best_feasible(view: StudyView) -> Point | None:
    """The feasible setting with the highest figure on the study's axis (then utility)."""
    feasible = [p for p in view.points + view.defaults if p.feasible]
    return max(feasible, key=lambda p: (p.protection, p.utility), default=None)


def run_one(path: Path, console: Console) -> dict[str, Any]:
    """Run or resume one study; its JSON entry."""
    config = load_tune_config(path)
    home = ArenaHome.from_environment()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = Tracker.for_home(home, uri, config.tracking.experiment)
    console.print(f"[bold]{config.name}[/]: {config.defense}, axis {config.axis}")
    start = time.perf_counter()
    outcome = run_study(
        config,
        tracker,
        home,
        on_trial=lambda label, params, scores: console.print(
            f"  {label} {params}: {'failed' if scores is None else scores.protection}",
            highlight=False,
        ),
    )
    view, best = outcome.view, best_feasible(outcome.view)
    starts = [t.datetime_start for t in outcome.study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in outcome.study.trials if t.datetime_complete]
    return {
        # when the trials ran (Optuna's clock: the machine's local time), not when this wrote
        "trials_ran": [min(starts).isoformat(" ", "minutes"), max(ends).isoformat(" ", "minutes")]
        if starts and ends
        else None,
        "config": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        "study": view.name,
        "defense": config.defense,
        "axis": config.axis,
        "attacks": [a.name for a in config.attacks],
        "budget": config.budget,
        "benign_callers": config.benign.callers if config.benign else 0,
        "max_false_positives": config.max_false_positives,
        "utility_floor": outcome.floor,
        "victim_accuracy": view.victim_accuracy,
        "trials": len(view.points),
        "evaluated_now": outcome.evaluated_now,
        "wall_seconds_this_run": time.perf_counter() - start,
        "points": [asdict(p) for p in view.points],
        "defaults": [asdict(p) for p in view.defaults],
        "frontier": [p.label for p in view.frontier],
        "best": asdict(best) if best else None,
        "table": frontier_table(view),
    }


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _figure(axis: str, value: float) -> str:
    return f"{value:.2f}×" if axis == "cost" else f"{value:.4f}"


def trials_table(study: dict[str, Any]) -> str:
    """Every evaluated setting: defaults no trial played first, then the trials by parameters."""
    with_fpr = any(p["false_positive_rate"] is not None for p in study["points"])
    header = ["setting", "parameters", "utility", study["axis"]]
    header += ["benign FPR"] * with_fpr + ["feasible", "on frontier"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    front = set(study["frontier"])
    trials = sorted(study["points"], key=lambda p: sorted(p["params"].items()))
    played = [p["params"] for p in trials]  # a default a trial played is shown as that trial
    for point in [d for d in study["defaults"] if d["params"] not in played] + trials:
        cells = [point["label"], _settings(point["params"]) or "—", f"{point['utility']:.4f}"]
        cells.append(_figure(study["axis"], point["protection"]))
        if with_fpr:
            fpr = point["false_positive_rate"]
            cells.append("—" if fpr is None else f"{fpr:.2f}")
        cells += ["yes" if point["feasible"] else "no", "yes" if point["label"] in front else ""]
        lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any]) -> str:
    """The docs section: per study, what it searched, its best feasible setting and its trials."""
    parts = []
    for study in report["studies"]:
        bound = study["max_false_positives"]
        fpr = "" if bound is None else f", benign false positives ≤ {bound:.0%}"
        feasible = sum(p["feasible"] for p in study["points"])
        head = (
            f"**{study['defense']}**, {study['axis']} against {', '.join(study['attacks'])} at "
            f"{study['budget']} queries, {study['benign_callers']} benign callers per trial "
            f"(`{study['config']}`): {study['trials']} trials, {feasible} feasible "
            f"(utility within {study['utility_floor']}{fpr})."
        )
        best = study["best"]
        if best is None:
            verdict = "No feasible setting."
        else:
            settings = _settings(best["params"]) or "the plug-in's own settings"
            verdict = (
                f"Best feasible: {settings} ({best['label']}), {study['axis']} "
                f"{_figure(study['axis'], best['protection'])} at utility {best['utility']:.4f}."
            )
        parts.append(f"{head} {verdict}\n\n{trials_table(study)}")
    spans = [s["trials_ran"] for s in report["studies"] if s.get("trials_ran")]
    ran = (
        f"trials played {min(a for a, _ in spans)} to {max(b for _, b in spans)}; " if spans else ""
    )
    stamp = (
        f"_{ran}written {report['date'][:16].replace('T', ' ')} UTC at commit "
        f"{report['commit']} (`{report['command_short']}`)._"
    )
    return "\n".join(parts) + "\n" + stamp + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path, nargs="+", default=CONFIGS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/axis_studies.json")
    parser.add_argument("--render", type=Path, help="print the docs tables of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    console = Console()
    studies = [run_one(path.resolve(), console) for path in args.configs]
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "command_short": command_short(),
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "studies": studies,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report), end="")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
