"""The defense table: every defense at two or three settings against every attack at one budget.

Runs a tournament config (``configs/defense_suite.yaml`` by default) through the same code as
``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches), then
tabulates, per defense chain: utility, L1 and KL perturbation on the attacker's queries and on the
test set, the latency ratio to the undefended model, stolen accuracy and fidelity per attack, and
for detectors the queries to detection per attack and whether the benign caller was flagged.
Usage (from the repository root)::

    python benchmarks/defense_suite.py [--config configs/defense_suite.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
import torch
from config_runs import run_config
from rich.console import Console

from arena.record import MatchResult
from orchestration.config import load_config
from orchestration.leaderboard import markdown_table

REPO = Path(__file__).resolve().parents[1]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def defense_rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """One row per defense chain (in config order), averaged over seeds, attacks side by side."""
    by_defense: dict[str, list[MatchResult]] = defaultdict(list)
    for r in results:
        by_defense[r.defense].append(r)
    rows = []
    for defense, group in by_defense.items():
        attacks: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(r.attack for r in group):
            matches = [r for r in group if r.attack == name]
            detections = [r.queries_to_detection for r in matches]
            attacks[name] = {
                "stolen_accuracy": _mean([r.stolen_accuracy for r in matches]),
                "fidelity": _mean([r.fidelity for r in matches]),
                "queries_used": _mean([float(r.queries_used) for r in matches]),
                "detected": sum(r.detected for r in matches),
                "queries_to_detection": detections,
                "benign_flagged": [r.benign_flagged for r in matches],
                "benign_queries_to_detection": [r.benign_queries_to_detection for r in matches],
            }
        rows.append(
            {
                "defense": defense,
                "utility": _mean([r.utility for r in group]),
                "victim_accuracy": _mean([r.victim_accuracy for r in group]),
                "l1": _mean([r.perturbation_l1 for r in group]),
                "kl": _mean([r.perturbation_kl for r in group]),
                "test_l1": _mean([r.test_perturbation_l1 for r in group]),
                "test_kl": _mean([r.test_perturbation_kl for r in group]),
                "latency_ratio": _mean([r.latency_ratio for r in group]),
                "attacks": attacks,
                "watched": any(r.benign_flagged is not None for r in group),
            }
        )
    return rows


def _detection_text(row: dict[str, Any]) -> str:
    if not row["watched"]:
        return "—"
    parts = []
    for name, cell in row["attacks"].items():
        found = [q for q in cell["queries_to_detection"] if q is not None]
        parts.append(f"{name}: {', '.join(map(str, found)) or 'no'}")
    benign = [f for cell in row["attacks"].values() for f in cell["benign_flagged"]]
    parts.append(f"benign flagged {sum(map(bool, benign))}/{len(benign)}")
    return "; ".join(parts)


def markdown(rows: list[dict[str, Any]], budgets: list[int]) -> str:
    attacks = list(dict.fromkeys(a for row in rows for a in row["attacks"]))
    at = "/".join(map(str, budgets))
    header = [
        "defense",
        "utility",
        "L1 (attack q)",
        "KL nats (attack q)",
        "L1 (test)",
        "KL nats (test)",
        "latency×",
        *[f"{a} acc / fid @{at}" for a in attacks],
        "detection (queries to detection)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["defense"],
            f"{row['utility']:.4f}",
            f"{row['l1']:.3f}",
            f"{row['kl']:.3f}",
            f"{row['test_l1']:.3f}",
            f"{row['test_kl']:.3f}",
            f"{row['latency_ratio']:.2f}",
            *[
                f"{row['attacks'][a]['stolen_accuracy']:.4f} / {row['attacks'][a]['fidelity']:.4f}"
                if a in row["attacks"]
                else "—"
                for a in attacks
            ],
            _detection_text(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "defense_suite.yaml")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "defense_suite.json"
    )
    args = parser.parse_args()
    console = Console(width=200)
    config = load_config(args.config)
    outcome, wall = run_config(config, console)
    rows = defense_rows(outcome.results)
    table = markdown(rows, config.budgets)
    console.print(table)
    console.print(markdown_table(outcome.leaderboard))
    console.print(f"played {outcome.played}, skipped {outcome.skipped}, wall {wall:.0f} s")
    if outcome.failures:
        for failure in outcome.failures:
            console.print(f"[red]failed {failure.match_key}: {failure.reason.splitlines()[0]}")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "config": str(args.config),
        "wall_seconds_this_run": wall,
        "played": outcome.played,
        "skipped": outcome.skipped,
        "failures": [f.match_key for f in outcome.failures],
        "rows": rows,
        "table_markdown": table,
        "leaderboard_markdown": markdown_table(outcome.leaderboard),
        "matches": [r.model_dump() for r in outcome.results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
