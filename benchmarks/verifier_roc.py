"""Ownership verifiers as classifiers: ROC AUC and false-claim rate, stolen versus independent.

A verifier is only useful if it separates the models copied from the victim from the models
that were not. This benchmark measures that, per verifier and threat model:

1. Plays the config (``configs/ownership_verifiers.yaml`` by default) through the same code as
   ``arena tournament`` (Ray, MLflow under ``ARENA_HOME``; a rerun only plays missing matches).
   Every stolen model (API thieves at each budget, the model-access and data-access threat
   models) goes through every removal of the config; the referee records each verifier's
   verdict on it. These are the positives.
2. In this process: ``--independent`` models of each of ``--archs``, trained with true labels
   on the attacker-pool split (disjoint from the victim's training data; cached under
   ``ARENA_HOME``), judged on the same evidence the tournament built (it is cached). These are
   the negatives: any claim on them is a false claim.
3. Per verifier and threat model: the share of stolen models claimed at the verifier's own
   threshold, the ROC AUC of its score (stolen against independent), the false-claim rate, and
   what a verification costs. A hypothesis-test verifier is scored by ``-log10 p``.

Usage (from the repository root)::

    python benchmarks/verifier_roc.py [--config FILE] [--independent 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from config_runs import run_config
from machine import write_record
from rich.console import Console
from sklearn.metrics import roc_auc_score

import agents  # noqa: F401  (registers the attacks)
from arena.attacker import ATTACKS
from arena.data import DataSplits, load_dataset
from arena.defenses.base import Judgement, OwnershipEvidence
from arena.defenses.chain import build_chain
from arena.home import ArenaHome
from arena.models import build_model
from arena.normalization import normalized
from arena.record import MatchResult
from arena.specs import MatchSpec
from arena.training import TrainRecipe, accuracy, predict_probs, train_classifier
from arena.victims import defended_model, load_or_train
from orchestration.config import load_config
from orchestration.escaping import markdown_rows

REPO = Path(__file__).resolve().parents[1]
INDEPENDENT_RECIPE = TrainRecipe(epochs=15, lr=3e-3, batch_size=128)
"""the victim's own recipe, so independent models are as good as the data allows"""


def ranking_score(verdict: dict[str, Any]) -> float:
    """The verdict's score for ranking: ``-log10 p`` for a hypothesis test, else its score."""
    p = verdict.get("p_value")
    if p is None:
        return float(verdict["score"])
    return -math.log10(max(float(p), 1e-300))


def threat_model(result: MatchResult) -> str:
    """What the thief was granted: the API only, or a model-access / data-access threat model."""
    return str(getattr(ATTACKS.get(result.attack_name), "threat_model", "api"))


def stolen_rows(results: list[MatchResult]) -> list[dict[str, Any]]:
    """One row per (stolen model, verifier) from the match records."""
    rows = []
    for r in results:
        for verdict in json.loads(r.ownership) if r.ownership else []:
            rows.append(
                {
                    "verifier": verdict["verifier"],
                    "threat_model": threat_model(r),
                    "attack": r.attack,
                    "budget": r.budget,
                    "removal": r.removal,
                    "stolen_accuracy": r.stolen_accuracy,
                    "verified": bool(verdict["verified"]),
                    "score": ranking_score(verdict),
                    "keys": verdict.get("keys"),
                    "p_value": verdict.get("p_value"),
                }
            )
    return rows


def independent_model(
    arch: str, seed: int, data: DataSplits, cache: Path, console: Console
) -> torch.nn.Module:
    """A model of ``arch`` trained from ``seed`` on the attacker-pool split with its true labels
    (never the victim's data or answers), cached by (dataset, arch, seed, recipe)."""
    network = normalized(
        build_model(arch, data.input_shape, data.num_classes, seed), data.normalization
    )
    path = cache / f"independent-{data.name}-{arch}-{seed}-{INDEPENDENT_RECIPE.epochs}.pt"
    if path.is_file():
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return network.eval()
    start = time.perf_counter()
    pool = data.attacker_pool
    train_classifier(network, pool.x, pool.y, INDEPENDENT_RECIPE, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    console.print(
        f"  trained independent {arch} seed {seed} in {time.perf_counter() - start:.0f} s"
    )
    return network.eval()


def verifier_evidence(spec: MatchSpec, data: DataSplits) -> list[tuple[str, OwnershipEvidence]]:
    """The chain's verifiers and their evidence for the victim (built, or loaded from the cache
    the tournament filled); evidence that depends on a caller's queries is left out."""
    chain = build_chain(spec.defenses)
    defended_model(spec.victim, load_or_train(spec.victim, data).model, chain, data)
    return [
        (spec.defenses[position].name, evidence)
        for position, evidence in chain.ownership_keys(chain.new_states())
    ]


def judged(evidence: OwnershipEvidence, model: torch.nn.Module) -> tuple[Judgement, float]:
    start = time.perf_counter()
    judgement = evidence.judge(model)
    return judgement, time.perf_counter() - start


def independent_rows(
    spec: MatchSpec, archs: Sequence[str], count: int, console: Console
) -> list[dict[str, Any]]:
    """Every independent model judged by every verifier of ``spec``'s chain."""
    data = load_dataset(spec.victim.dataset)
    cache = ArenaHome.from_environment().root / "independent"
    start = time.perf_counter()
    evidence = verifier_evidence(spec, data)
    console.print(f"evidence ready in {time.perf_counter() - start:.0f} s")
    rows = []
    for arch in archs:
        for seed in range(1, count + 1):
            model = independent_model(arch, seed, data, cache, console)
            test_accuracy = accuracy(predict_probs(model, data.test.x), data.test.y)
            for name, found in evidence:
                judgement, seconds = judged(found, model)
                verdict = {k: v for k, v in vars(judgement).items() if v is not None}
                rows.append(
                    {
                        "verifier": name,
                        "arch": arch,
                        "seed": seed,
                        "test_accuracy": test_accuracy,
                        "verified": judgement.verified,
                        "score": ranking_score(verdict),
                        "p_value": judgement.p_value,
                        "judge_seconds": seconds,
                    }
                )
                console.print(
                    f"  independent {arch}/{seed} ({test_accuracy:.3f}) {name}: "
                    f"{'claimed' if judgement.verified else 'refused'} {judgement.score:.3f}"
                )
    return rows


def summary(
    stolen: list[dict[str, Any]], independent: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per verifier and threat model (and all together): claims, AUC, false claims."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in stolen:
        groups[(row["verifier"], row["threat_model"])].append(row)
        groups[(row["verifier"], "all")].append(row)
    out = []
    for (verifier, threat), positives in sorted(groups.items()):
        negatives = [r for r in independent if r["verifier"] == verifier]
        labels = [1] * len(positives) + [0] * len(negatives)
        scores = [r["score"] for r in positives] + [r["score"] for r in negatives]
        auc = float(roc_auc_score(labels, scores)) if negatives and positives else None
        out.append(
            {
                "verifier": verifier,
                "threat_model": threat,
                "stolen_models": len(positives),
                "claimed": sum(r["verified"] for r in positives),
                "independent_models": len(negatives),
                "false_claims": sum(r["verified"] for r in negatives),
                "roc_auc": auc,
                "keys": statistics.median(r["keys"] for r in positives if r["keys"] is not None)
                if any(r["keys"] is not None for r in positives)
                else None,
            }
        )
    return out


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "verifier",
        "threat model",
        "stolen models claimed",
        "ROC AUC vs independent",
        "false claims",
        "keys / samples",
    ]
    body = [
        [
            r["verifier"],
            r["threat_model"],
            f"{r['claimed']}/{r['stolen_models']}",
            "—" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}",
            f"{r['false_claims']}/{r['independent_models']}",
            "—" if r["keys"] is None else f"{r['keys']:.0f}",
        ]
        for r in rows
    ]
    return markdown_rows(header, body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "ownership_verifiers.yaml"
    )
    parser.add_argument("--independent", type=int, default=5, help="models per architecture")
    parser.add_argument("--archs", nargs="+", default=["lenet5", "mlp"])
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "verifier_roc.json"
    )
    args = parser.parse_args(argv)
    loadavg = os.getloadavg()
    console = Console()
    config = load_config(args.config)
    outcome, wall = run_config(config, console)
    stolen = stolen_rows(outcome.results)
    verifier_specs = [s for s in config.matches() if len(s.defenses) > 0]
    independent = independent_rows(verifier_specs[0], args.archs, args.independent, console)
    rows = summary(stolen, independent)
    table = summary_markdown(rows)
    console.print(table)
    write_record(
        args.out,
        "verifier_roc",
        loadavg,
        {
            "config": str(args.config.relative_to(REPO)),
            "tournament_seconds": wall,
            "failures": [f.reason for f in outcome.failures],
            "summary": rows,
            "stolen": stolen,
            "independent": independent,
            "markdown": table,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
