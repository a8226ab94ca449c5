"""The four axes of protection: every defense's prevention, detection, attribution and cost.

Runs a tournament config (``configs/protection_axes.yaml`` by default) through the same code as
``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches), then
writes the four-axes leaderboard (``arena.protection_axes``, as ``arena tournament`` prints it)
and, per defense and attack, what each axis is made of: stolen accuracy, whether and when the
thief's accounts were flagged, the benign callers flagged beside it, the thief's proof-of-work
cost over a benign caller's, and the ownership verdict on its substitute. ``--seeds`` plays a
subset of the config's seeds first (same tournament, so the full run later skips them).

Usage (from the repository root)::

    python benchmarks/protection_axes.py [--config FILE] [--seeds 0 ...] [--out FILE]
    python benchmarks/protection_axes.py --render FILE     # the docs tables
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from config_runs import run_config, run_report, write_report
from rich.console import Console

from arena.protection_axes import accounts_flagged, benign_flags
from arena.record import MatchResult
from orchestration.config import load_config
from orchestration.escaping import markdown_cell, markdown_rows
from orchestration.leaderboard import axes_markdown

REPO = Path(__file__).resolve().parents[1]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def detail_rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """One row per (defense, attack), seeds averaged, in the order the tournament played them."""
    groups: dict[tuple[str, str], list[MatchResult]] = defaultdict(list)
    for result in results:
        groups[(result.defense, result.attack)].append(result)
    rows = []
    for (defense, attack), group in groups.items():
        watched = [r for r in group if r.benign_flagged is not None]  # its chain detects
        benign_flagged, benign_callers = benign_flags(watched)
        detections = [r.queries_to_detection for r in group if r.queries_to_detection is not None]
        ratios = [r.work_cost_ratio for r in group if r.work_cost_ratio is not None]
        verdicts = [r.ownership_verified for r in group if r.ownership_verified is not None]
        rows.append(
            {
                "defense": defense,
                "attack": attack,
                "seeds": len(group),
                "upper_bound": group[0].upper_bound,
                "utility": _mean([r.utility for r in group]),
                "stolen_accuracy": _mean([r.stolen_accuracy for r in group]),
                "flagged_share": _mean([accounts_flagged(r) for r in watched]),
                "queries_to_detection": _mean([float(q) for q in detections]),
                "benign_callers": benign_callers,
                "benign_callers_flagged": benign_flagged,
                "work_cost_ratio": _mean(ratios),
                "ownership_claimed": sum(verdicts) if verdicts else None,
                "ownership_judged": len(verdicts),
            }
        )
    return rows


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def detail_markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "defense",
        "attack",
        "stolen acc",
        "thief flagged",
        "queries to flag",
        "benign flagged",
        "work × benign",
        "ownership claimed",
    ]
    cells = [
        [
            markdown_cell(row["defense"]),
            markdown_cell(row["attack"] + (" (upper bound)" if row["upper_bound"] else "")),
            _number(row["stolen_accuracy"], ".4f"),
            _number(row["flagged_share"], ".2f"),
            _number(row["queries_to_detection"], ",.0f"),
            f"{row['benign_callers_flagged']}/{row['benign_callers']}"
            if row["benign_callers"]
            else "—",
            _number(row["work_cost_ratio"], ".1f"),
            "—"
            if row["ownership_claimed"] is None
            else f"{row['ownership_claimed']}/{row['ownership_judged']}",
        ]
        for row in rows
    ]
    return "\n".join(markdown_rows(header, cells)) + "\n"


def render(path: Path) -> str:
    """The docs tables of a written JSON."""
    report = json.loads(path.read_text())
    at = report["date"][:16].replace("T", " ") + " UTC"
    seeds = ", ".join(map(str, report["seeds"]))
    stamp = (
        f"_Measured {at} at commit {report['commit']} (`{report['command_short']}`; seeds "
        f"{seeds}, {len(report['matches'])} matches, {report['played']} played in this run)._"
    )
    return "\n".join([report["axes_markdown"], report["detail_markdown"], stamp])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "protection_axes.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", help="play only these seeds of the config")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "protection_axes.json"
    )
    parser.add_argument("--render", type=Path, help="print the docs tables of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    console = Console(width=200)
    config = load_config(args.config)
    if args.seeds:
        config = config.model_copy(update={"seeds": args.seeds})
    outcome, wall = run_config(config, console)
    rows = detail_rows(outcome.results)
    axes = axes_markdown(outcome.leaderboard)
    details = detail_markdown(rows)
    console.print(axes)
    console.print(details)
    console.print(f"played {outcome.played}, skipped {outcome.skipped}, wall {wall:.0f} s")
    for failure in outcome.failures:
        console.print(f"[red]failed {failure.match_key}: {failure.reason.splitlines()[0]}")
    report = run_report(args.config, outcome, wall) | {
        "seeds": list(config.seeds),
        "rows": rows,
        "axes_markdown": axes,
        "detail_markdown": details,
    }
    status: int = write_report(report, args.out, outcome, console)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
