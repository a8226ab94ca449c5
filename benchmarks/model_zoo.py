"""Model-zoo serving: the fingerprinting thief against attacking the chosen model directly and
against naive thieves, and the target-noise defense's price in goodput (Sanyal et al., 2023).

Runs a tournament config (``configs/model_zoo.yaml`` by default) through the same code as
``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches), then
tabulates per budget and noise scale, for each thief: stolen accuracy, fidelity to the zoo's
reference member, the share of the thief's queries that member answered, and the goodput of a
benign workload with mixed targets. The zoo's profile (members' accuracy and latency measured on
this machine) is printed first. Usage (from the repository root)::

    python benchmarks/model_zoo.py [--config configs/model_zoo.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config_runs import run_config
from machine import write_record
from rich.console import Console

from arena.data import load_dataset
from arena.home import ArenaHome
from arena.record import MatchResult
from arena.victims import load_or_train
from arena.zoo import ZooModule
from orchestration.config import TournamentConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def noise_scale(defense: str) -> float:
    """``target_noise(scale=0.5)`` -> 0.5; ``none`` -> 0."""
    if defense == "none":
        return 0.0
    if defense == "target_noise":
        return 0.25  # the defense's default scale
    return float(defense.split("scale=")[1].rstrip(")"))


def thief_label(result: MatchResult) -> str:
    if result.victim_arch != "zoo":
        return f"direct: {result.attack} on the {result.victim_arch} alone"
    if result.attack_name == "knockoff":
        return "naive: knockoff, no targets"
    return result.attack


def rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """One row per (budget, thief, noise scale), averaged over seeds."""
    cells: dict[tuple[int, str, float], list[MatchResult]] = defaultdict(list)
    for r in results:
        cells[(r.budget, thief_label(r), noise_scale(r.defense))].append(r)
    out = []
    for (budget, thief, scale), group in sorted(cells.items()):
        zoo = [r for r in group if r.goodput is not None]
        out.append(
            {
                "budget": budget,
                "thief": thief,
                "noise_scale": scale,
                "stolen_accuracy": statistics.fmean(r.stolen_accuracy for r in group),
                "fidelity": statistics.fmean(r.fidelity for r in group),
                "reference_share": statistics.fmean(r.reference_share or 0.0 for r in zoo)
                if zoo
                else None,
                "goodput": statistics.fmean(r.goodput or 0.0 for r in zoo) if zoo else None,
                "served_by": [json.loads(r.served_by) for r in zoo],
                "victim_accuracy": statistics.fmean(r.victim_accuracy for r in group),
                "matches": len(group),
            }
        )
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    header = [
        "budget",
        "thief",
        "noise scale",
        "stolen acc",
        "fidelity",
        "reference share",
        "goodput",
        "queries per member",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        share, goodput = row["reference_share"], row["goodput"]
        cells = [
            str(row["budget"]),
            row["thief"],
            f"{row['noise_scale']:g}",
            f"{row['stolen_accuracy']:.4f}",
            f"{row['fidelity']:.4f}",
            "—" if share is None else f"{share:.3f}",
            "—" if goodput is None else f"{goodput:.3f}",
            " ".join(map(str, row["served_by"])) or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def zoo_profiles(config: TournamentConfig, cache: Path) -> list[dict[str, Any]]:
    """Each zoo's members with the accuracy and latency the service selects by."""
    profiles = []
    for victim in config.victims:
        if not victim.is_zoo or victim.members is None:
            continue
        model = load_or_train(victim, load_dataset(victim.dataset), cache).model
        assert isinstance(model, ZooModule)
        profile = model.profile()
        profiles.append(
            {
                "zoo": victim.key(),
                "reference": profile.reference,
                "members": [
                    {
                        "arch": member.arch,
                        "accuracy": profile.accuracy[i],
                        "latency_ms": profile.latency_ms[i],
                    }
                    for i, member in enumerate(victim.members)
                ],
            }
        )
    return profiles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "model_zoo.yaml")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "model_zoo.json"
    )
    args = parser.parse_args(argv)
    console = Console(width=200)
    loadavg_start = os.getloadavg()
    config = load_config(args.config)
    outcome, wall = run_config(config, console)
    profiles = zoo_profiles(config, ArenaHome.from_environment().root / "victims")
    for profile in profiles:
        console.print(f"zoo {profile['zoo']} (reference member {profile['reference']}):")
        for m in profile["members"]:
            console.print(f"  {m['arch']}: accuracy {m['accuracy']:.4f}, {m['latency_ms']:.3f} ms")
    table = rows(outcome.results)
    text = markdown(table)
    console.print(text)
    console.print(f"played {outcome.played}, skipped {outcome.skipped}, wall {wall:.0f} s")
    for failure in outcome.failures:
        console.print(f"[red]failed {failure.match_key}: {failure.reason.splitlines()[0]}")
    write_record(
        args.out,
        "model_zoo",
        loadavg_start,
        {
            "config": str(args.config),
            "wall_seconds_this_run": wall,
            "played": outcome.played,
            "skipped": outcome.skipped,
            "failures": [f.match_key for f in outcome.failures],
            "zoos": profiles,
            "rows": table,
            "table_markdown": text,
            "matches": [r.model_dump() for r in outcome.results],
        },
    )
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
