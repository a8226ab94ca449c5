"""DFME (data-free model extraction) against the default undefended Fashion-MNIST victim.

Plays real matches with :func:`arena.referee.play_match` (attack ``dfme``, defense ``none``, the
``VictimSpec()`` LeNet-5 from the victim cache) at several query budgets and reports, per budget,
the substitute's test accuracy, its fidelity (agreement with the victim) and the attack's wall
time. Two variants side by side: ``dfme`` with its defaults (the replay passes over every
answer bought) and ``dfme-paper`` with ``replay_steps=0`` (the student only learns from its
online steps, as in Truong et al.). The paper spends millions of queries; this shows how far
DFME gets at 1k-50k. One torch thread, like every process of the arena.

Usage (from the repository root)::

    python benchmarks/dfme.py [--budgets 1000 5000 10000 50000] [--seeds 0] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from machine import write_record
from rich.console import Console
from rich.table import Table

import agents  # noqa: F401  (registers the attacks)
from arena.data import DataSplits, load_dataset
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train

VARIANTS: dict[str, dict[str, Any]] = {"dfme": {}, "dfme-paper": {"replay_steps": 0}}
"""name -> dfme hyperparameters: the defaults, and the paper's student (no replay passes)"""
DEFAULT_BUDGETS = (1000, 5000, 10000, 50000)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dfme.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="match seeds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--quick", action="store_true", help="a 1-epoch victim, budgets 300 and 1000 (smoke)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.budgets = [300, 1000]
    if min(args.budgets) < 1 or min(args.seeds) < 0:
        parser.error("--budgets must be >= 1 and --seeds >= 0")
    return args


def play(victim: VictimSpec, data: DataSplits, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for budget in args.budgets:
        for variant, params in VARIANTS.items():
            for seed in args.seeds:
                spec = MatchSpec(
                    victim=victim,
                    defenses=(PluginSpec(name="none"),),
                    attack=PluginSpec(name="dfme", params=params),
                    budget=budget,
                    seed=seed,
                )
                record = play_match(spec, data)
                row = {"variant": variant, "params": params, **record.model_dump()}
                rows.append(row)
                print(
                    f"{variant} budget={budget} seed={seed}: stolen {record.stolen_accuracy:.3f}, "
                    f"fidelity {record.fidelity:.3f}, {record.attack_seconds:.1f} s",
                    flush=True,
                )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and std over seeds) per (budget, variant)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["budget"], row["variant"]), []).append(row)
    summary = []
    for (budget, variant), group in groups.items():
        entry: dict[str, Any] = {"budget": budget, "variant": variant, "seeds": len(group)}
        for key in ("stolen_accuracy", "fidelity", "attack_seconds", "queries_used"):
            values = [float(r[key]) for r in group]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.pstdev(values)
        summary.append(entry)
    return summary


def print_table(summary: list[dict[str, Any]], victim_accuracy: float, console: Console) -> None:
    title = f"DFME vs the undefended Fashion-MNIST LeNet-5 (victim accuracy {victim_accuracy:.3f})"
    table = Table(title=title)
    for column in ("budget", "variant", "seeds", "queries used", "stolen acc", "fidelity", "s"):
        table.add_column(column, justify="left" if column == "variant" else "right")

    def cell(entry: dict[str, Any], key: str) -> str:
        std = f" ± {entry[f'{key}_std']:.3f}" if entry["seeds"] > 1 else ""
        return f"{entry[key]:.3f}{std}"

    for entry in summary:
        table.add_row(
            f"{entry['budget']:,}",
            entry["variant"],
            str(entry["seeds"]),
            f"{entry['queries_used']:,.0f}",
            cell(entry, "stolen_accuracy"),
            cell(entry, "fidelity"),
            f"{entry['attack_seconds']:.1f}",
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    loadavg_start = os.getloadavg()
    started = time.perf_counter()
    victim = VictimSpec(epochs=1) if args.quick else VictimSpec()
    data = load_dataset(victim.dataset)
    load_or_train(victim, data)  # cached once, outside the timed matches
    rows = play(victim, data, args)
    summary = summarise(rows)
    print_table(summary, rows[0]["victim_accuracy"], Console())
    write_record(
        args.out,
        "dfme",
        loadavg_start,
        {
            "seconds": time.perf_counter() - started,
            "victim": victim.model_dump(mode="json"),
            "variants": VARIANTS,
            "summary": summary,
            "matches": rows,
        },
    )


if __name__ == "__main__":
    main()
