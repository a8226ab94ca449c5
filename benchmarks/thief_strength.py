"""How strong are the thieves? Each transfer-set attack's own recipe against constant-rate Adam.

Runs ``configs/thief_strength.yaml`` through the same code as ``arena tournament`` (Ray, MLflow
under ``ARENA_HOME``; a rerun plays only missing matches): every transfer-set attack, undefended,
on the default victim, at each budget and seed. Every match records two stolen accuracies on one
transfer set: the attack's own (its recipe, :mod:`agents._thief_recipe`) and the second track's
(the same queries and targets retrained with plain constant-rate Adam, 1e-3, batch 64, 20
epochs: :data:`arena.training.REFERENCE_RECIPE`). The table gives both, averaged over seeds,
their difference, and the worst seed's difference; an attack is at least as strong as the
reference when the mean difference is ``>= 0``.

Usage (from the repository root)::

    python benchmarks/thief_strength.py [--budgets 1000 5000] [--seeds 0 1 2]
                                        [--config configs/thief_strength.yaml] [--out FILE]
                                        [--leave-out LABEL ...]
    python benchmarks/thief_strength.py --render benchmarks/results/thief_strength.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from config_runs import run_config
from machine import git_commit, measured_stamp, write_record
from rich.console import Console

from arena.attacker import ATTACKS
from arena.record import MatchResult
from arena.registry import build_plugin, plugin_label
from arena.specs import PluginSpec
from orchestration.config import load_config

REPO = Path(__file__).resolve().parents[1]


def strength_rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """Per (attack, budget): mean own and reference stolen accuracy over seeds, and the gap."""
    cells: dict[tuple[str, int], list[MatchResult]] = defaultdict(list)
    for result in results:
        cells[(result.attack, result.budget)].append(result)
    rows = []
    for (attack, budget), group in sorted(cells.items()):
        paired = [r for r in group if r.reference_stolen_accuracy is not None]
        gaps = [r.stolen_accuracy - r.reference_stolen_accuracy for r in paired]  # type: ignore[operator]
        rows.append(
            {
                "attack": attack,
                "budget": budget,
                "seeds": sorted(r.seed for r in group),
                "own": statistics.fmean(r.stolen_accuracy for r in group),
                "reference": statistics.fmean(r.reference_stolen_accuracy for r in paired)  # type: ignore[misc]
                if paired
                else None,
                "gap": statistics.fmean(gaps) if gaps else None,
                "worst_gap": min(gaps) if gaps else None,
                "recipe": json.loads(group[0].thief_recipe) if group[0].thief_recipe else None,
                "recipes": [json.loads(r.thief_recipe) if r.thief_recipe else None for r in group],
                "attack_seconds": statistics.fmean(r.attack_seconds for r in group),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], stamp: str) -> str:
    """The docs table (rendered from the JSON, never retyped)."""

    def number(value: float | None, signed: bool = False) -> str:
        return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")

    lines = [
        "| attack | budget | seeds | own recipe | constant Adam, 20 ep | gap (mean) "
        "| gap (worst seed) | own epochs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        epochs = row["recipe"]["epochs"] if row["recipe"] else "—"
        lines.append(
            f"| {row['attack']} | {row['budget']:,} | {len(row['seeds'])} | {number(row['own'])} "
            f"| {number(row['reference'])} | {number(row['gap'], True)} "
            f"| {number(row['worst_gap'], True)} | {epochs} |"
        )
    return "\n".join([*lines, "", *best_response_lines(rows), stamp])


def attack_label(attack: PluginSpec) -> str:
    """An attack entry's label as its match records and the table show it."""
    return plugin_label(attack.name, build_plugin(ATTACKS, attack.name, attack.params))


def fixed_self(attack: str) -> str:
    """The label of the same attack without its best-response option."""
    label = re.sub(r"best_response_trials=\d+,?", "", attack).replace(",)", ")")
    return label.removesuffix("()")


def best_response_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each best-response row against its fixed-recipe self (same budget, same seeds)."""
    own = {(row["attack"], row["budget"]): row for row in rows}
    lines = []
    for row in rows:
        base = own.get((fixed_self(row["attack"]), row["budget"]))
        if "best_response_trials" not in row["attack"] or base is None:
            continue
        chosen = "; ".join(_brief(r) for r in row.get("recipes", []) if r)
        lines.append(
            f"| {row['attack']} | {row['budget']:,} | {row['own']:.3f} | {base['own']:.3f} "
            f"| {row['own'] - base['own']:+.3f} | {chosen} |"
        )
    if not lines:
        return []
    header = [
        "| best response | budget | stolen | fixed self | difference | chosen per seed |",
        "|---|---:|---:|---:|---:|---|",
    ]
    return [*header, *lines, ""]


def _brief(recipe: dict[str, Any]) -> str:
    return (
        f"{recipe.get('targets')}, {recipe.get('epochs')} ep, lr {recipe.get('lr'):g}, "
        f"shift {recipe.get('shift_pixels', 0)}, {recipe.get('arch')}"
    )


def render(path: Path) -> str:
    record = json.loads(path.read_text())
    return markdown(record["rows"], measured_stamp(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "thief_strength.yaml")
    parser.add_argument("--budgets", type=int, nargs="*")
    parser.add_argument("--seeds", type=int, nargs="*")
    parser.add_argument(
        "--leave-out",
        nargs="*",
        default=[],
        metavar="LABEL",
        help="attack entries not to play, by their table label, e.g. "
        "'knockoff(best_response_trials=4)' (each costs four to six fixed fits)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/thief_strength.json")
    parser.add_argument("--render", type=Path, help="print the docs table of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    loadavg = os.getloadavg()
    console = Console(width=200)
    config = load_config(args.config)
    update = {k: v for k, v in (("budgets", args.budgets), ("seeds", args.seeds)) if v}
    if args.leave_out:
        labels = {attack_label(a): a for a in config.attacks}
        unknown = sorted(set(args.leave_out) - set(labels))
        if unknown:
            parser.error(f"--leave-out: no attack entry labelled {', '.join(unknown)}")
        update["attacks"] = [a for label, a in labels.items() if label not in args.leave_out]
    config = config.model_copy(update=update)
    outcome, wall = run_config(config, console)
    rows = strength_rows(outcome.results)
    commit = git_commit()
    console.print(markdown(rows, f"commit {commit}, wall {wall:.0f} s"))
    fields = {
        "commit": commit,
        "config": str(args.config.relative_to(REPO))
        if args.config.is_relative_to(REPO)
        else str(args.config),
        "budgets": config.budgets,
        "seeds": config.seeds,
        "wall_seconds_this_run": wall,
        "played": outcome.played,
        "failures": [f.match_key for f in outcome.failures],
        "rows": rows,
        "matches": [r.model_dump() for r in outcome.results],
    }
    write_record(args.out, "thief_strength", loadavg, fields)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
