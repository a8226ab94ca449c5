"""The defense table: every defense at two or three settings against every attack at one budget.

Runs a tournament config (``configs/defense_suite.yaml`` by default) through the same code as
``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches), then
tabulates, per defense chain: utility, L1 and KL perturbation on the attacker's queries and on the
test set, the latency ratio to the undefended model, stolen accuracy and fidelity per attack, and
for detectors the queries to detection per attack and whether the benign caller was flagged.
Usage (from the repository root)::

    python benchmarks/defense_suite.py [--config configs/defense_suite.yaml] [--out FILE]
    python benchmarks/defense_suite.py --render FILE [--before OLD_FILE]   # the docs tables
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray
import torch
from config_runs import run_config, run_report, write_report
from rich.console import Console

from arena.record import MatchResult
from orchestration.config import load_config
from orchestration.escaping import markdown_rows
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
                "reference_stolen_accuracy": _mean(
                    [r.reference_stolen_accuracy for r in matches if r.reference_stolen_accuracy]
                ),
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


def _attack_cell(cell: dict[str, Any] | None) -> str:
    return "—" if cell is None else f"{cell['stolen_accuracy']:.4f} / {cell['fidelity']:.4f}"


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
    cells = []
    for row in rows:
        cells.append(
            [
                row["defense"],
                f"{row['utility']:.4f}",
                f"{row['l1']:.3f}",
                f"{row['kl']:.3f}",
                f"{row['test_l1']:.3f}",
                f"{row['test_kl']:.3f}",
                f"{row['latency_ratio']:.2f}",
                *[_attack_cell(row["attacks"].get(a)) for a in attacks],
                _detection_text(row),
            ]
        )
    return "\n".join(markdown_rows(header, cells)) + "\n"


def strongest(row: dict[str, Any]) -> tuple[str, float]:
    """The row's strongest attack and its stolen accuracy (protection is 1 minus that)."""
    name = max(row["attacks"], key=lambda a: row["attacks"][a]["stolen_accuracy"])
    return name, row["attacks"][name]["stolen_accuracy"]


def protection_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Per defense, the strongest attack and protection of two records side by side."""
    old = {row["defense"]: row for row in before["rows"]}
    lines = [
        "| defense | utility | strongest before | protection before "
        "| strongest after | protection after | change |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for row in after["rows"]:
        name, stolen = strongest(row)
        if row["defense"] not in old:
            lines.append(
                f"| {row['defense']} | {row['utility']:.4f} | — | — | {name} "
                f"{stolen:.4f} | {1 - stolen:.4f} | — |"
            )
            continue
        old_name, old_stolen = strongest(old[row["defense"]])
        lines.append(
            f"| {row['defense']} | {row['utility']:.4f} | {old_name} {old_stolen:.4f} "
            f"| {1 - old_stolen:.4f} | {name} {stolen:.4f} | {1 - stolen:.4f} "
            f"| {old_stolen - stolen:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def render(path: Path, before: Path | None) -> str:
    """The docs tables of a written JSON (and, given an older one, the change in protection)."""
    report = json.loads(path.read_text())
    parts = [report["table_markdown"], report["leaderboard_markdown"]]
    if before is not None:
        old = json.loads(before.read_text())
        parts.append(protection_change(old, report))
        parts.append(f"_Before: measured {_when(old)} ({before.name})._\n")
    parts.append(
        f"_Measured {_when(report)} (`python benchmarks/defense_suite.py`, "
        f"{len(report['matches'])} matches, {report['played']} played in this run's "
        f"{report['wall_seconds_this_run']:.0f} s)._"
    )
    return "\n".join(parts)


def _when(report: dict[str, Any]) -> str:
    commit = report.get("commit")
    at = report["date"][:16].replace("T", " ") + " UTC"
    return f"{at} at commit {commit}" if commit else at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "defense_suite.yaml")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "defense_suite.json"
    )
    parser.add_argument("--render", type=Path, help="print the docs tables of a written JSON")
    parser.add_argument("--before", type=Path, help="with --render: an older JSON to compare")
    args = parser.parse_args()
    if args.render:
        print(render(args.render, args.before))
        return 0
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
    report = run_report(args.config, outcome, wall) | {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "rows": rows,
        "table_markdown": table,
        "leaderboard_markdown": markdown_table(outcome.leaderboard),
    }
    status: int = write_report(report, args.out, outcome, console)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
