"""Ownership verifiers as classifiers: ROC AUC and false-claim rate, stolen versus independent.

A verifier is only useful if it separates the models copied from the victim from the models
that were not. This benchmark measures that, per verifier and threat model, in this process:

1. Every thief of the config (``configs/ownership_verifiers.yaml``: API thieves at each budget,
   the model-access and data-access threat models) steals once from the victim served behind the
   config's verifier chain, exactly as its match would (same attacker identity, seed and grant);
   the stolen model is cached under ``ARENA_HOME/stolen`` (keyed without the verifiers, which
   change no answer) so a rerun, or another verifier chain, judges it without stealing again.
   Thieves that spend no query (model access, data access from scratch) steal once, at the
   smallest budget.
2. Each stolen model goes through every removal of the config (seeded as the match's), then every
   verifier of the chain judges it: the positives.
3. ``--independent`` models of each of ``--archs``, trained with true labels on the
   attacker-pool split (disjoint from the victim's training data; cached under
   ``ARENA_HOME/independent``), judged on the same evidence: the negatives. Any claim on them is
   a false claim.
4. Per verifier and threat model: stolen models claimed at the verifier's own threshold, the ROC
   AUC of its score (stolen against independent), false claims, keys or samples per
   verification. A hypothesis-test verifier is ranked by ``-log10 p``.

The same line-up also plays as a tournament (``arena tournament configs/ownership_verifiers.yaml``)
with the verdicts in every match record; this script adds the negatives and the ROC.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from machine import git_commit, write_record
from rich.console import Console
from sklearn.metrics import roc_auc_score

import agents  # noqa: F401  (registers the attacks)
from arena.attacker import ATTACKS
from arena.data import DataSplits, load_dataset
from arena.defenses import DEFENSES
from arena.defenses.base import Judgement, OwnershipEvidence
from arena.home import ArenaHome
from arena.identities import attacker_id
from arena.knowledge import MODEL_ACCESS
from arena.match_data import MatchData
from arena.models import build_model
from arena.normalization import normalized
from arena.oracle import Oracle
from arena.ownership import judge
from arena.referee import grant_knowledge
from arena.registry import build_plugin, plugin_label
from arena.removal import REMOVALS
from arena.seeds import attacker_rng, match_rng
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import MatchSpec
from arena.training import TrainRecipe, accuracy, predict_probs, train_classifier
from orchestration.config import load_config
from orchestration.escaping import markdown_rows

REPO = Path(__file__).resolve().parents[1]
INDEPENDENT_RECIPE = TrainRecipe(epochs=15, lr=3e-3, batch_size=128)
"""the victim's own recipe, so independent models are as good as their data allows"""
Evidence = list[tuple[str, OwnershipEvidence]]


def ranking_score(verdict: dict[str, Any]) -> float:
    """The verdict's score for ranking: ``-log10 p`` for a hypothesis test, else its score."""
    p = verdict.get("p_value")
    if p is None:
        return float(verdict["score"])
    return -math.log10(max(float(p), 1e-300))


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


def verifier_labels(spec: MatchSpec) -> list[str]:
    """Each defense of the chain by name and changed parameters (a chain may hold one verifier
    twice, with different settings)."""
    return [plugin_label(d.name, build_plugin(DEFENSES, d.name, d.params)) for d in spec.defenses]


def chain_evidence(service: VictimService, identity: str, labels: list[str]) -> Evidence:
    """The evidence of every verifier of the chain, for one caller, labelled."""
    return [(labels[position], found) for position, found in service.ownership_keys(identity)]


def judged(evidence: OwnershipEvidence, model: torch.nn.Module, label: str) -> dict[str, Any]:
    """One verdict as a row: verified, ranking score, p-value, keys, seconds (a failure is an
    unverified verdict, as the referee records it)."""
    start = time.perf_counter()
    try:
        judgement: Judgement | None = judge(evidence, model, label)
    except Exception as exc:
        judgement, failure = None, str(exc)
    seconds = time.perf_counter() - start
    if judgement is None:
        return {"verified": False, "score": 0.0, "failure": failure, "judge_seconds": seconds}
    verdict = {k: v for k, v in vars(judgement).items() if v is not None}
    return {
        "verified": judgement.verified,
        "score": ranking_score(verdict),
        "raw_score": judgement.score,
        "threshold": judgement.threshold,
        "p_value": judgement.p_value,
        "keys": judgement.keys,
        "judge_seconds": seconds,
    }


def spends_queries(spec: MatchSpec) -> bool:
    """False for thieves that never query: model access, and data access trained from scratch."""
    kind = ATTACKS.get(spec.attack.name)
    if kind.threat_model == MODEL_ACCESS:
        return False
    return not (spec.attack.name == "data_access" and spec.attack.params.get("mode") == "scratch")


def thefts(specs: list[MatchSpec]) -> dict[str, list[MatchSpec]]:
    """The config's matches grouped by theft (the match without its removal), each theft once;
    thieves that spend no query only at the smallest budget."""
    smallest = min(s.budget for s in specs)
    groups: dict[str, list[MatchSpec]] = defaultdict(list)
    for spec in specs:
        if spends_queries(spec) or spec.budget == smallest:
            groups[theft_key(spec)].append(spec)
    return groups


def theft_key(spec: MatchSpec) -> str:
    """What a theft depends on: the match without its removal and without its verifiers (they
    change no answer), so a chain with another verifier judges the same stolen models."""
    return spec.model_copy(update={"removal": None, "defenses": ()}).key()


def steal(
    spec: MatchSpec, service: VictimService, data: DataSplits, cache: Path, console: Console
) -> tuple[torch.nn.Module, Any, float]:
    """The match's theft (its identity, grant and seed), or the cached stolen model; with the
    thief's knowledge (the removals use it) and the seconds it took (0 when cached)."""
    attacker = build_plugin(ATTACKS, spec.attack.name, spec.attack.params)
    threat = type(attacker).threat_model
    match_data = MatchData.from_splits(data, spec.pool, threat_model=threat)
    knowledge = grant_knowledge(spec, match_data, attacker, None, service)
    path = cache / f"{theft_key(spec)}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False), knowledge, 0.0
    identity = attacker_id(spec)
    service.open_account(identity, spec.budget)
    start = time.perf_counter()
    stolen = attacker.steal(Oracle(service, identity), knowledge, attacker_rng(spec))
    seconds = time.perf_counter() - start
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(stolen, path)
    console.print(f"  stole {spec.attack.name} @{spec.budget} in {seconds:.0f} s")
    return stolen, knowledge, seconds


def stolen_rows(
    specs: list[MatchSpec],
    service: VictimService,
    evidence: Evidence,
    data: DataSplits,
    console: Console,
    on_row: Callable[[dict[str, Any]], None],
) -> None:
    """Every theft, after every removal, judged by every verifier (rows passed to ``on_row``)."""
    cache = ArenaHome.from_environment().root / "stolen"
    for matches in thefts(specs).values():
        stolen, knowledge, seconds = steal(matches[0], service, data, cache, console)
        attack = plugin_label(
            matches[0].attack.name,
            build_plugin(ATTACKS, matches[0].attack.name, matches[0].attack.params),
        )
        threat = ATTACKS.get(matches[0].attack.name).threat_model
        for spec in matches:
            removal = spec.removal.name if spec.removal else "none"
            params = spec.removal.params if spec.removal else {}
            remover = build_plugin(REMOVALS, removal, params)
            model = remover.apply(stolen, knowledge, match_rng(spec, "removal"))
            test_accuracy = accuracy(predict_probs(model, data.test.x), data.test.y)
            for label, found in evidence:
                row = {
                    "verifier": label,
                    "threat_model": threat,
                    "attack": attack,
                    "budget": spec.budget if spends_queries(spec) else 0,
                    "removal": plugin_label(removal, remover),
                    "stolen_accuracy": test_accuracy,
                    "theft_seconds": seconds,
                    **judged(found, model, label),
                }
                console.print(
                    f"  {attack} @{row['budget']} {row['removal']} ({test_accuracy:.3f}) "
                    f"{label}: {'claimed' if row['verified'] else 'refused'} {row['score']:.3g}"
                )
                on_row(row)


def independent_rows(
    evidence: Evidence, data: DataSplits, archs: Sequence[str], count: int, console: Console
) -> list[dict[str, Any]]:
    """Every independent model judged by every verifier."""
    cache = ArenaHome.from_environment().root / "independent"
    rows = []
    for arch in archs:
        for seed in range(1, count + 1):
            model = independent_model(arch, seed, data, cache, console)
            test_accuracy = accuracy(predict_probs(model, data.test.x), data.test.y)
            for label, found in evidence:
                row = {"verifier": label, "arch": arch, "seed": seed}
                row |= {"test_accuracy": test_accuracy, **judged(found, model, label)}
                console.print(
                    f"  independent {arch}/{seed} ({test_accuracy:.3f}) {label}: "
                    f"{'claimed' if row['verified'] else 'refused'} {row['score']:.3g}"
                )
                rows.append(row)
    return rows


def summary(
    stolen: list[dict[str, Any]], independent: list[dict[str, Any]], by: str = "threat_model"
) -> list[dict[str, Any]]:
    """Per verifier and value of ``by`` (``threat_model`` or ``removal``; and all together):
    stolen models claimed, ROC AUC against the independent models, false claims."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in stolen:
        groups[(row["verifier"], row[by])].append(row)
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
                by: threat,
                "stolen_models": len(positives),
                "claimed": sum(r["verified"] for r in positives),
                "independent_models": len(negatives),
                "false_claims": sum(r["verified"] for r in negatives),
                "roc_auc": auc,
                "keys": statistics.median(keys) if (keys := _keys(positives)) else None,
            }
        )
    return out


def _keys(rows: list[dict[str, Any]]) -> list[int]:
    return [r["keys"] for r in rows if r.get("keys") is not None]


def summary_markdown(rows: list[dict[str, Any]], by: str = "threat_model") -> str:
    header = [
        "verifier",
        by.replace("_", " "),
        "stolen models claimed",
        "ROC AUC vs independent",
        "false claims",
        "keys / samples",
    ]
    body = [
        [
            r["verifier"],
            r[by],
            f"{r['claimed']}/{r['stolen_models']}",
            "—" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}",
            f"{r['false_claims']}/{r['independent_models']}",
            "—" if r["keys"] is None else f"{r['keys']:.0f}",
        ]
        for r in rows
    ]
    return "\n".join(markdown_rows(header, body)) + "\n"


def render(path: Path) -> str:
    """The docs tables of a written record, stamped with when and at which commit it ran."""
    record = json.loads(path.read_text())
    stamp = (
        f"_Measured {record['finished'][:16].replace('T', ' ')} UTC at commit "
        f"{record.get('commit', '?')} (`python benchmarks/verifier_roc.py`"
        f"{', partial' if record.get('partial') else ''})._"
    )
    negatives = independent_markdown(record["independent"])
    return "\n\n".join([record["markdown"], record["by_removal_markdown"], negatives, stamp])


def independent_markdown(rows: list[dict[str, Any]]) -> str:
    """Per verifier and architecture: the independent models' scores and false claims."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[(row["verifier"], row["arch"])].append(row)
    body = [
        [
            verifier,
            arch,
            f"{statistics.fmean(r['test_accuracy'] for r in group):.3f}",
            " ".join(f"{r['score']:.2f}" for r in group),
            f"{sum(r['verified'] for r in group)}/{len(group)}",
        ]
        for (verifier, arch), group in sorted(cells.items())
    ]
    header = ["verifier", "independent arch", "test acc", "scores", "claimed"]
    return "\n".join(markdown_rows(header, body)) + "\n"


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
    parser.add_argument("--render", type=Path, help="print the docs tables of a written JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    loadavg, commit = os.getloadavg(), git_commit()
    console = Console()
    specs = load_config(args.config).matches()
    if len({(s.victim.key(), str(s.defenses)) for s in specs}) != 1:
        raise SystemExit("the config must have one victim and one verifier chain")
    data = load_dataset(specs[0].victim.dataset)
    start = time.perf_counter()
    service = build_service(specs[0].victim, specs[0].defenses, data)
    build_seconds = time.perf_counter() - start
    console.print(f"victim and verifiers ready in {build_seconds:.0f} s")
    service.open_account("evidence", 1)
    evidence = chain_evidence(service, "evidence", verifier_labels(specs[0]))
    stolen: list[dict[str, Any]] = []
    independent: list[dict[str, Any]] = []

    def record(partial: bool) -> None:
        rows = summary(stolen, independent)
        removals = summary(stolen, independent, by="removal")
        write_record(
            args.out,
            "verifier_roc",
            loadavg,
            {
                "config": str(args.config),
                "commit": commit,
                "partial": partial,
                "verifiers_ready_seconds": build_seconds,
                "summary": rows,
                "markdown": summary_markdown(rows),
                "by_removal": removals,
                "by_removal_markdown": summary_markdown(removals, by="removal"),
                "stolen": stolen,
                "independent": independent,
            },
        )

    independent.extend(independent_rows(evidence, data, args.archs, args.independent, console))
    record(partial=True)
    stolen_rows(specs, service, evidence, data, console, stolen.append)
    record(partial=False)
    console.print(summary_markdown(summary(stolen, independent)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
