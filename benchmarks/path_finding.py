"""Path finding (Tramèr et al., USENIX Security 2016, §4.2) against Fashion-MNIST decision trees.

For each tree depth it fits (or loads from the victim cache) a ``decision_tree`` victim on the
50k victim split and records its test accuracy, its leaves and how many distinct answers they
give (leaves with equal class counts answer alike). Then it plays ``path_finding`` matches
through :func:`arena.referee.play_match`, one per attack seed:

- ``exact``: a budget large enough to finish (the queries used are what the attack *needs*),
  thresholds bisected to adjacent float32 values (``tolerance=0``, the default);
- ``tol 1e-3``: the same with bisection stopped at width 1e-3 (cheaper, approximate);
- ``capped``: the exact attack at a capped budget (partial trees);
- ``label-only``: the capped budget behind the ``label_only`` defense (leaf identities lost).

It reports queries used, fidelity (test-set agreement with the undefended victim), stolen
accuracy and attack seconds, as mean ± std over the seeds. One torch thread.

Usage (from the repository root)::

    python benchmarks/path_finding.py [--depths 4 6 8] [--seeds 3] [--budget 100000] \
        [--capped 10000] [--out FILE] [--quick]
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

import agents  # noqa: F401  (registers path_finding)
from arena.data import DataSplits, load_dataset
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.trees import DecisionTreeModule
from arena.victims import default_victim_cache, load_or_train

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "path_finding.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--seeds", type=int, default=3, help="attack seeds per setting")
    parser.add_argument("--budget", type=int, default=100_000, help="the uncapped budget")
    parser.add_argument("--capped", type=int, default=10_000, help="the capped budget")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="digits, depths 3 and 5 (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.depths, args.seeds, args.capped = "digits", [3, 5], 1, 500
    if args.seeds < 1 or args.budget < 1 or args.capped < 1:
        parser.error("--seeds, --budget and --capped must be >= 1")
    if not all(1 <= d <= VictimSpec.MAX_TREE_DEPTH for d in args.depths):
        parser.error(f"every depth must lie in 1..{VictimSpec.MAX_TREE_DEPTH}")
    return args


def settings(args: argparse.Namespace) -> dict[str, tuple[int, dict[str, Any], str]]:
    """name -> (budget, attack parameters, defense)"""
    return {
        "exact": (args.budget, {}, "none"),
        "tol 1e-3": (args.budget, {"tolerance": 1e-3}, "none"),
        "capped": (args.capped, {}, "none"),
        "label-only": (args.capped, {}, "label_only"),
    }


def distinct_answers(tree: DecisionTreeModule) -> int:
    """How many different answers the tree's leaves give (reachable leaves only)."""
    finite = torch.isfinite(tree.threshold).tolist()
    leaves: list[int] = []
    stack = [(0, 0)]
    while stack:
        node, level = stack.pop()
        if level == tree.depth:
            leaves.append(node - (len(finite)))
            continue
        stack.append((2 * node + 1, level + 1))
        if finite[node]:
            stack.append((2 * node + 2, level + 1))
    answers = torch.softmax(tree.leaf_logits[leaves], dim=1)
    return len({row.numpy().tobytes() for row in answers})


def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def run_depth(
    depth: int, data: DataSplits, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    spec = VictimSpec(dataset=args.dataset, arch="decision_tree", max_depth=depth)
    start = time.perf_counter()
    victim = load_or_train(spec, data, default_victim_cache())
    fit_seconds = time.perf_counter() - start
    assert isinstance(victim.model, DecisionTreeModule)
    entry: dict[str, Any] = {
        "victim_key": spec.key(),
        "victim_accuracy": victim.test_accuracy,
        "leaves": victim.model.leaf_count(),
        "distinct_answers": distinct_answers(victim.model),
        "from_cache": victim.from_cache,
        "load_or_fit_seconds": fit_seconds,
        "settings": {},
    }
    for name, (budget, params, defense) in settings(args).items():
        runs = []
        for seed in range(args.seeds):
            match = MatchSpec(
                victim=spec,
                defenses=(PluginSpec(name=defense),),
                attack=PluginSpec(name="path_finding", params=params),
                budget=budget,
                seed=seed,
            )
            result = play_match(match, data, default_victim_cache())
            runs.append(
                {
                    "seed": seed,
                    "queries_used": result.queries_used,
                    "finished": result.queries_used < budget,
                    "fidelity": result.fidelity,
                    "stolen_accuracy": result.stolen_accuracy,
                    "attack_seconds": result.attack_seconds,
                }
            )
        summary = {
            key: mean_std([float(r[key]) for r in runs])
            for key in ("queries_used", "fidelity", "stolen_accuracy", "attack_seconds")
        }
        entry["settings"][name] = {
            "budget": budget,
            "params": params,
            "defense": defense,
            "finished": sum(r["finished"] for r in runs),
            "summary": summary,
            "runs": runs,
        }
        console.log(
            f"depth {depth} {name}: {summary['queries_used']['mean']:.0f} queries, "
            f"fidelity {summary['fidelity']['mean']:.4f}"
        )
    return entry


def print_table(results: dict[str, Any], seeds: int, console: Console) -> None:
    table = Table(title=f"path finding vs decision trees (mean ± std over {seeds} attack seeds)")
    columns = ("depth", "leaves", "answers", "victim acc", "setting", "budget", "queries")
    for column in (*columns, "finished", "fidelity", "stolen acc", "attack s"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for depth, entry in results.items():
        for name, row in entry["settings"].items():
            s = row["summary"]
            table.add_row(
                depth,
                str(entry["leaves"]),
                str(entry["distinct_answers"]),
                f"{entry['victim_accuracy']:.4f}",
                name,
                f"{row['budget']:,}",
                f"{s['queries_used']['mean']:,.0f} ± {s['queries_used']['std']:,.0f}",
                f"{row['finished']}/{seeds}",
                f"{s['fidelity']['mean']:.4f} ± {s['fidelity']['std']:.4f}",
                f"{s['stolen_accuracy']['mean']:.4f}",
                f"{s['attack_seconds']['mean']:.1f}",
            )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=150)
    loadavg_start = os.getloadavg()
    started = time.perf_counter()
    data = load_dataset(args.dataset)
    results = {str(depth): run_depth(depth, data, args, console) for depth in args.depths}
    print_table(results, args.seeds, console)
    write_record(
        args.out,
        "path_finding",
        loadavg_start,
        {
            "seconds": time.perf_counter() - started,
            "dataset": args.dataset,
            "seeds": args.seeds,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
