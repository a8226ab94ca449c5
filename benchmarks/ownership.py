"""Ownership verification: true positives on stolen models, false claims on independent models,
and survival under removal attacks; and what the training-time defenses cost and protect.

1. Runs the tournament config (``configs/ownership.yaml`` by default) through the same code as
   ``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches):
   per defense and budget, utility, stolen accuracy, fidelity and whether the victim's
   verifiers claimed the stolen model (the true-positive rate over the attacks).
2. In this process, for every verifier defense and attack at ``--removal-budget``: steals once
   (the same theft as the tournament's match: same attacker identity and seed), then scores the
   stolen model as is and after each removal attack (pruning at several amounts, fine-tuning),
   and checks the same keys against ``--independent`` models of the victim's architecture
   trained from other seeds with no access to the victim (the false-claim rate).

Usage (from the repository root)::

    python benchmarks/ownership.py [--config configs/ownership.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from config_runs import run_config
from machine import write_record
from rich.console import Console

import agents  # noqa: F401  (registers the attacks)
from arena.attacker import ATTACKS
from arena.data import Split, load_dataset
from arena.defenses.base import OwnershipKeys
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.referee import (
    MatchData,
    MatchResult,
    attacker_id,
    attacker_rng,
    build_service,
    key_agreement,
)
from arena.registry import build_plugin
from arena.removal import REMOVALS
from arena.specs import MatchSpec, PluginSpec
from arena.training import accuracy, predict_probs
from arena.victims import load_or_train
from orchestration.config import load_config
from orchestration.leaderboard import markdown_table

REPO = Path(__file__).resolve().parents[1]
REMOVAL_ATTACKS = [
    PluginSpec(name="prune", params={"amount": 0.2}),
    PluginSpec(name="prune", params={"amount": 0.4}),
    PluginSpec(name="prune", params={"amount": 0.6}),
    PluginSpec(name="fine_tune", params={}),
]


def tournament_rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """Per (defense, budget): utility, per-attack stolen accuracy / fidelity, verdicts."""
    cells: dict[tuple[str, int], list[MatchResult]] = defaultdict(list)
    for r in results:
        cells[(r.defense, r.budget)].append(r)
    rows = []
    for (defense, budget), group in sorted(cells.items(), key=lambda c: (c[0][0] != "none", c[0])):
        checked = [r for r in group if r.ownership_verified is not None]
        rows.append(
            {
                "defense": defense,
                "budget": budget,
                "utility": statistics.fmean(r.utility for r in group),
                "victim_accuracy": statistics.fmean(r.victim_accuracy for r in group),
                "attacks": {
                    r.attack: {
                        "stolen_accuracy": r.stolen_accuracy,
                        "fidelity": r.fidelity,
                        "ownership_verified": r.ownership_verified,
                        "ownership_score": r.ownership_score,
                    }
                    for r in group
                },
                "true_positive_rate": (
                    sum(bool(r.ownership_verified) for r in checked) / len(checked)
                    if checked
                    else None
                ),
            }
        )
    return rows


def tournament_markdown(rows: list[dict[str, Any]]) -> str:
    attacks = list(dict.fromkeys(a for row in rows for a in row["attacks"]))
    header = [
        "defense",
        "budget",
        "utility",
        *[f"{a}: stolen acc / fidelity / verified (score)" for a in attacks],
        "TPR",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["defense"], str(row["budget"]), f"{row['utility']:.4f}"]
        for a in attacks:
            cell = row["attacks"].get(a)
            if cell is None:
                cells.append("—")
                continue
            verdict = cell["ownership_verified"]
            claim = (
                "—"
                if verdict is None
                else f"{'yes' if verdict else 'no'} ({cell['ownership_score']:.2f})"
            )
            cells.append(f"{cell['stolen_accuracy']:.4f} / {cell['fidelity']:.4f} / {claim}")
        tpr = row["true_positive_rate"]
        cells.append("—" if tpr is None else f"{tpr:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def score(model: torch.nn.Module, keys: OwnershipKeys, test: Split) -> dict[str, Any]:
    """A suspect's agreement with the keys, the verdict, and its test accuracy."""
    agreement = key_agreement(model, keys.x, keys.y)
    return {
        "stolen_accuracy": accuracy(predict_probs(model, test.x), test.y),
        "score": agreement,
        "verified": agreement >= keys.threshold,
    }


def removal_study(
    specs: list[MatchSpec], independent: int, console: Console
) -> list[dict[str, Any]]:
    """Steal once per spec, then score the model as is, after each removal attack, and the
    same keys on independent models."""
    out = []
    for spec in specs:
        data = load_dataset(spec.victim.dataset)
        service = build_service(spec, data)
        identity = attacker_id(spec)
        service.open_account(identity, spec.budget)
        match_data = MatchData.from_splits(data, spec.pool)
        knowledge = Knowledge(
            pool=match_data.pool,
            pool_name=spec.pool,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            substitute_arch=spec.substitute_arch or spec.victim.arch,
        )
        attacker = build_plugin(ATTACKS, spec.attack.name, spec.attack.params)
        start = time.perf_counter()
        stolen = attacker.steal(Oracle(service, identity), knowledge, attacker_rng(spec))
        seconds = time.perf_counter() - start
        found = service.ownership_keys(identity)
        if not found:
            continue
        [(_, keys)] = found
        removals = {"none": score(stolen, keys, data.test)}
        for removal in REMOVAL_ATTACKS:
            remover = build_plugin(REMOVALS, removal.name, removal.params)
            rng = np.random.default_rng(int(spec.key(), 16) ^ 0x5E11)
            label = f"{removal.name}{json.dumps(removal.params) if removal.params else ''}"
            removals[label] = score(remover.apply(stolen, knowledge, rng), keys, data.test)
        claims = []
        for seed in range(1, independent + 1):
            other = spec.victim.model_copy(update={"seed": spec.victim.seed + seed})
            model = load_or_train(other, data).model
            claims.append({"seed": other.seed, **score(model, keys, data.test)})
        row = {
            "defense": spec.defenses[0].name,
            "attack": spec.attack.name,
            "budget": spec.budget,
            "keys": int(keys.y.numel()),
            "threshold": keys.threshold,
            "theft_seconds": seconds,
            "removals": removals,
            "independent": claims,
            "false_claims": sum(c["verified"] for c in claims),
        }
        console.print(
            f"  {row['defense']} / {row['attack']}: {row['keys']} keys, "
            + ", ".join(f"{k} {v['score']:.2f}" for k, v in removals.items())
            + f"; independent {[round(c['score'], 2) for c in claims]}"
        )
        out.append(row)
    return out


def removal_markdown(rows: list[dict[str, Any]]) -> str:
    labels = list(dict.fromkeys(k for row in rows for k in row["removals"]))
    header = [
        "verifier",
        "attack",
        "keys",
        *[f"{k}: score (stolen acc)" for k in labels],
        "independent models: scores",
        "false claims",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["defense"], row["attack"], str(row["keys"])]
        for k in labels:
            r = row["removals"][k]
            mark = "✓" if r["verified"] else "✗"
            cells.append(f"{mark} {r['score']:.2f} ({r['stolen_accuracy']:.4f})")
        cells.append(" ".join(f"{c['score']:.2f}" for c in row["independent"]))
        cells.append(f"{row['false_claims']}/{len(row['independent'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "ownership.yaml")
    parser.add_argument("--removal-budget", type=int, default=10000)
    parser.add_argument("--independent", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "ownership.json"
    )
    args = parser.parse_args(argv)
    console = Console(width=220)
    loadavg_start = os.getloadavg()
    torch.set_num_threads(1)
    config = load_config(args.config)
    start = time.perf_counter()
    outcome, tournament_seconds = run_config(config, console)
    rows = tournament_rows(outcome.results)
    console.print(tournament_markdown(rows))
    console.print(markdown_table(outcome.leaderboard))
    torch.set_num_threads(2)
    verifier_specs = [
        s
        for s in config.matches()
        if s.budget == args.removal_budget
        and any(name in s.defenses[0].name for name in ("dawn", "watermark"))
    ]
    removal_rows = removal_study(verifier_specs, args.independent, console)
    console.print(removal_markdown(removal_rows))
    write_record(
        args.out,
        "ownership",
        loadavg_start,
        {
            "config": str(args.config),
            "tournament_seconds_this_run": tournament_seconds,
            "wall_seconds": time.perf_counter() - start,
            "played": outcome.played,
            "skipped": outcome.skipped,
            "failures": [f.match_key for f in outcome.failures],
            "rows": rows,
            "table_markdown": tournament_markdown(rows),
            "leaderboard_markdown": markdown_table(outcome.leaderboard),
            "removal_budget": args.removal_budget,
            "removal_rows": removal_rows,
            "removal_markdown": removal_markdown(removal_rows),
            "matches": [r.model_dump() for r in outcome.results],
        },
    )
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
