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
3. With ``--survival``, a positive control for the removal attacks, on models that do carry the
   watermark (the thieves of part 2 carry none, so nothing is left to remove there):
   - the adversarially watermarked victim itself, as a thief who copied its weights holds it;
   - DAWN against a memorising thief: Knockoff's random queries and soft targets at each of
     ``--memorise-budgets``, trained in rounds until the substitute reproduces the answers'
     top-1 on ``--memorise-target`` of its queries or ``--memorise-max-epochs`` are spent.
   Each is scored as is, after the same removals as part 2, and after fine-tuning on the same
   number of pool images with their true labels (a thief who has labels); the same keys are
   checked on the same independent models. Written to ``--survival-out``.
   ``--skip-tournament`` runs only this part (parts 1 and 2 and their JSON are left alone).

Usage (from the repository root)::

    python benchmarks/ownership.py [--config configs/ownership.yaml] [--out FILE]
    python benchmarks/ownership.py --survival --skip-tournament
    python benchmarks/ownership.py --render benchmarks/results/ownership.json   # part 1's tables
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from config_runs import run_config
from machine import measured_stamp, write_record
from rich.console import Console

import agents  # noqa: F401  (registers the attacks)
from agents._transfer import TransferSetAttack, query_random_subset
from arena.attacker import ATTACKS
from arena.data import DataSplits, Split, load_dataset
from arena.defenses.base import OwnershipEvidence, OwnershipKeys
from arena.defenses.chain import build_chain
from arena.identities import attacker_id
from arena.knowledge import Knowledge
from arena.match_data import MatchData
from arena.oracle import Oracle
from arena.record import MatchResult
from arena.registry import build_plugin
from arena.removal import REMOVALS, FineTune
from arena.seeds import attacker_rng, match_rng, torch_seed
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec
from arena.training import FitReport, TrainRecipe, accuracy, predict_probs, train_until_fitted
from arena.victims import defended_model, load_or_train
from orchestration.config import TournamentConfig, load_config
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


def render(record: dict[str, Any]) -> str:
    """Part 1's docs tables of a written JSON (per defense and budget, then the leaderboard),
    stamped with the date, commit and command."""
    stamp = measured_stamp(record)
    return "\n".join(
        [record["table_markdown"], record["leaderboard_markdown"].strip(), "", stamp, ""]
    )


def score(model: torch.nn.Module, keys: OwnershipEvidence, test: Split) -> dict[str, Any]:
    """A suspect's score on the verifier's evidence, the verdict, and its test accuracy."""
    judgement = keys.judge(model)
    return {
        "stolen_accuracy": accuracy(predict_probs(model, test.x), test.y),
        "score": judgement.score,
        "verified": judgement.verified,
    }


def evidence_size(keys: OwnershipEvidence) -> dict[str, Any]:
    """How many keys or samples the evidence holds, and its threshold (judged on no model: a
    key-agreement threshold does not depend on the suspect)."""
    if isinstance(keys, OwnershipKeys):
        return {"keys": int(keys.y.numel()), "threshold": keys.threshold}
    return {}


def thief_knowledge(spec: MatchSpec, data: DataSplits) -> tuple[Knowledge, MatchData]:
    """What the match's thief is granted (pool, shapes, substitute) and the pool's labels."""
    match_data = MatchData.from_splits(data, spec.pool)
    knowledge = Knowledge(
        pool=match_data.pool,
        pool_name=spec.pool,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        substitute_arch=spec.substitute_arch or spec.victim.arch,
    )
    return knowledge, match_data


def after_removals(
    model: torch.nn.Module,
    keys: OwnershipEvidence,
    knowledge: Knowledge,
    spec: MatchSpec,
    test: Split,
    pool_labels: torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]:
    """The model scored as is and after each removal attack; with ``pool_labels``, also after
    fine-tuning on the same number of pool images with their true labels."""
    removals = {"none": score(model, keys, test)}
    for removal in REMOVAL_ATTACKS:
        remover = build_plugin(REMOVALS, removal.name, removal.params)
        rng = match_rng(spec, "removal")
        label = f"{removal.name}{json.dumps(removal.params) if removal.params else ''}"
        removals[label] = score(remover.apply(model, knowledge, rng), keys, test)
    if pool_labels is not None and knowledge.pool is not None:
        tuner, rng = FineTune(), match_rng(spec, "removal")
        rows = tuner.pick(knowledge.pool, rng)
        tuned = tuner.tune(model, knowledge.pool[rows], pool_labels[rows], rng)
        removals["fine_tune(true labels)"] = score(tuned, keys, test)
    return removals


def independent_claims(
    spec: MatchSpec, data: DataSplits, keys: OwnershipEvidence, independent: int
) -> list[dict[str, Any]]:
    """The keys checked on models of the victim's recipe from other seeds (cached once trained),
    which never saw the victim: any claim is a false one."""
    claims = []
    for seed in range(1, independent + 1):
        other = spec.victim.model_copy(update={"seed": spec.victim.seed + seed})
        model = load_or_train(other, data).model
        claims.append({"seed": other.seed, **score(model, keys, data.test)})
    return claims


def removal_study(
    specs: list[MatchSpec], independent: int, console: Console
) -> list[dict[str, Any]]:
    """Steal once per spec, then score the model as is, after each removal attack, and the
    same keys on independent models."""
    out = []
    for spec in specs:
        data = load_dataset(spec.victim.dataset)
        service = build_service(spec.victim, spec.defenses, data)
        identity = attacker_id(spec)
        service.open_account(identity, spec.budget)
        knowledge, _ = thief_knowledge(spec, data)
        attacker = build_plugin(ATTACKS, spec.attack.name, spec.attack.params)
        start = time.perf_counter()
        stolen = attacker.steal(Oracle(service, identity), knowledge, attacker_rng(spec))
        seconds = time.perf_counter() - start
        found = service.ownership_keys(identity)
        keys = dict(found).get(0)  # the chain's own defense (verifiers may follow it)
        if keys is None:
            continue
        claims = independent_claims(spec, data, keys, independent)
        row = {
            "defense": spec.defenses[0].name,
            "attack": spec.attack.name,
            "budget": spec.budget,
            **evidence_size(keys),
            "theft_seconds": seconds,
            "removals": after_removals(stolen, keys, knowledge, spec, data.test),
            "independent": claims,
            "false_claims": sum(c["verified"] for c in claims),
        }
        print_row(row, console)
        out.append(row)
    return out


def print_row(row: dict[str, Any], console: Console) -> None:
    console.print(
        f"  {row['defense']} / {row['attack']}: {row.get('keys', '—')} keys, "
        + ", ".join(f"{k} {v['score']:.2f}" for k, v in row["removals"].items())
        + f"; independent {[round(c['score'], 2) for c in row['independent']]}"
    )


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
        cells = [row["defense"], row["attack"], str(row.get("keys", "—"))]
        for k in labels:
            r = row["removals"][k]
            mark = "✓" if r["verified"] else "✗"
            cells.append(f"{mark} {r['score']:.2f} ({r['stolen_accuracy']:.4f})")
        cells.append(" ".join(f"{c['score']:.2f}" for c in row["independent"]))
        cells.append(f"{row['false_claims']}/{len(row['independent'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def copied_watermark(spec: MatchSpec, console: Console) -> tuple[dict[str, Any], OwnershipEvidence]:
    """The watermarked victim itself (a thief who exfiltrated its weights) under every removal."""
    data = load_dataset(spec.victim.dataset)
    chain = build_chain(spec.defenses)
    served = defended_model(spec.victim, load_or_train(spec.victim, data).model, chain, data)
    keys = dict(chain.ownership_keys(chain.new_states()))[0]
    knowledge, match_data = thief_knowledge(spec, data)
    row = {
        "defense": spec.defenses[0].name,
        "attack": "weights copied",
        "budget": 0,
        **evidence_size(keys),
        "removals": after_removals(
            served, keys, knowledge, spec, data.test, match_data.pool_labels
        ),
        "independent": [],
        "false_claims": 0,
    }
    print_row(row, console)
    return row, keys


def memorising_theft(
    spec: MatchSpec,
    target: float,
    max_epochs: int,
    round_epochs: int,
    console: Console,
) -> tuple[dict[str, Any], OwnershipEvidence]:
    """Knockoff's random policy (budget drawn uniformly from the pool, soft targets, its lr and
    batch) with the substitute trained until it reproduces its answers, the wrong ones included
    (a thief who stops when it generalises learns none of them); then every removal and the
    false claims."""
    data = load_dataset(spec.victim.dataset)
    service = build_service(spec.victim, spec.defenses, data)
    identity = attacker_id(spec)
    service.open_account(identity, spec.budget)
    knowledge, match_data = thief_knowledge(spec, data)
    assert knowledge.pool is not None
    knockoff = build_plugin(ATTACKS, "knockoff", spec.attack.params)
    assert isinstance(knockoff, TransferSetAttack)
    rng = attacker_rng(spec)
    oracle = Oracle(service, identity)
    queries, answers = query_random_subset(oracle, knowledge.pool, rng, knockoff.query_batch)
    keys = dict(service.ownership_keys(identity))[0]
    seed = torch_seed(rng)
    recipe = TrainRecipe(epochs=round_epochs, lr=knockoff.lr, batch_size=knockoff.batch_size)
    rounds: list[dict[str, float]] = []

    def follow(model: torch.nn.Module, report: FitReport) -> None:
        key_score = keys.judge(model).score
        rounds.append(
            {"epochs": report.epochs, "train_agreement": report.agreement, "key_score": key_score}
        )
        console.print(
            f"    {report.epochs} epochs: train agreement {report.agreement:.4f}, "
            f"keys {key_score:.2f}"
        )

    start = time.perf_counter()
    stolen, fit = train_until_fitted(
        knowledge.make_substitute(seed),
        queries,
        answers,
        recipe,
        seed,
        target,
        max_epochs,
        follow,
    )
    seconds = time.perf_counter() - start
    row = {
        "defense": spec.defenses[0].name,
        "attack": f"memorising knockoff @{budget_label(spec.budget)}",
        "budget": spec.budget,
        "queries_answered": int(answers.shape[0]),
        **evidence_size(keys),
        "target_agreement": target,
        "max_epochs": max_epochs,
        "epochs": fit.epochs,
        "train_agreement": fit.agreement,
        "reached_target": fit.agreement >= target,
        "train_seconds": seconds,
        "rounds": rounds,
        "removals": after_removals(
            stolen, keys, knowledge, spec, data.test, match_data.pool_labels
        ),
        "independent": [],
        "false_claims": 0,
    }
    print_row(row, console)
    return row, keys


def budget_label(budget: int) -> str:
    return f"{budget // 1000}k" if budget % 1000 == 0 else str(budget)


def survival_study(
    config: TournamentConfig,
    args: argparse.Namespace,
    console: Console,
    on_row: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Part 3: the positive controls (memorising DAWN thieves, largest budget first, and a copied
    watermarked victim), then the same independent models against every row's keys; ``on_row``
    gets the study so far after each step (a long run that is stopped keeps what it measured)."""
    matches = config.matches()
    [watermark] = [
        s
        for s in matches
        if s.defenses
        and s.defenses[0].name == "adversarial_watermark"
        and s.attack.name == "knockoff"
        and s.budget == max(config.budgets)
    ]
    dawn = sorted(
        (
            s
            for s in matches
            if s.defenses
            and s.defenses[0].name == "dawn"
            and s.attack.name == "knockoff"
            and s.budget in args.memorise_budgets
        ),
        key=lambda s: -s.budget,
    )
    copies: list[dict[str, Any]] = []
    memorising: list[dict[str, Any]] = []
    checked: list[tuple[dict[str, Any], MatchSpec, OwnershipEvidence]] = []
    # cheapest first: the memorising thieves need only the victim, the copy needs the watermarked
    # victim trained, and the independent models (the costliest) come last, once for all rows
    for spec in dawn:
        row, keys = memorising_theft(
            spec,
            args.memorise_target,
            args.memorise_max_epochs,
            args.memorise_round,
            console,
        )
        memorising.append(row)
        checked.append((row, spec, keys))
        on_row(summarise(copies, memorising))
    row, keys = copied_watermark(watermark, console)
    copies.append(row)
    checked.append((row, watermark, keys))
    on_row(summarise(copies, memorising))
    for row, spec, keys in checked:
        data = load_dataset(spec.victim.dataset)
        row["independent"] = independent_claims(spec, data, keys, args.independent)
        row["false_claims"] = sum(c["verified"] for c in row["independent"])
        print_row(row, console)
        on_row(summarise(copies, memorising))
    return summarise(copies, memorising)


def summarise(copies: list[dict[str, Any]], memorising: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [*copies, *memorising]
    claimed = [m["removals"]["none"]["verified"] for m in memorising]
    return {
        "rows": rows,
        "memorising_true_positive_rate": sum(claimed) / len(claimed) if claimed else None,
        "removal_markdown": removal_markdown(rows),
        "memorising_markdown": memorising_markdown(memorising),
    }


def memorising_markdown(rows: list[dict[str, Any]]) -> str:
    header = ["budget", "keys", "epochs", "train agreement", "stolen acc", "claimed (score)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        plain = row["removals"]["none"]
        lines.append(
            f"| {row['budget']} | {row['keys']} | {row['epochs']} | {row['train_agreement']:.4f} "
            f"| {plain['stolen_accuracy']:.4f} | {'yes' if plain['verified'] else 'no'} "
            f"({plain['score']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "ownership.yaml")
    parser.add_argument("--removal-budget", type=int, default=10000)
    parser.add_argument("--independent", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "ownership.json"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads for parts 2 and 3 (1 on a busy machine: waiting threads spin)",
    )
    parser.add_argument("--survival", action="store_true", help="also run part 3")
    parser.add_argument("--render", type=Path, help="print the tournament tables of a written JSON")
    parser.add_argument(
        "--skip-tournament", action="store_true", help="skip parts 1 and 2 (with --survival)"
    )
    parser.add_argument(
        "--survival-out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "ownership_survival.json",
    )
    parser.add_argument("--memorise-budgets", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument(
        "--memorise-target",
        type=float,
        default=0.999,
        help="train agreement to reach (0.5 %% of answers are wrong: 0.99 can leave them all out)",
    )
    parser.add_argument("--memorise-max-epochs", type=int, default=150)
    parser.add_argument("--memorise-round", type=int, default=10, help="epochs per round")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    if args.skip_tournament and not args.survival:
        parser.error("--skip-tournament leaves nothing to run without --survival")
    console = Console(width=220)
    loadavg_start = os.getloadavg()
    torch.set_num_threads(1)
    config = load_config(args.config)
    start = time.perf_counter()
    if args.skip_tournament:
        torch.set_num_threads(args.threads)
        return run_survival(config, args, console, loadavg_start, start)
    outcome, tournament_seconds = run_config(config, console)
    rows = tournament_rows(outcome.results)
    console.print(tournament_markdown(rows))
    console.print(markdown_table(outcome.leaderboard))
    torch.set_num_threads(args.threads)
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
    if args.survival:
        run_survival(config, args, console, loadavg_start, start)
    return 1 if outcome.failures else 0


def run_survival(
    config: TournamentConfig,
    args: argparse.Namespace,
    console: Console,
    loadavg_start: tuple[float, float, float],
    start: float,
) -> int:
    """Part 3, printed and written to ``--survival-out`` (rewritten after every row)."""

    def record(study: dict[str, Any], complete: bool = False) -> None:
        fields = {
            "config": str(args.config),
            "complete": complete,
            "memorise_budgets": args.memorise_budgets,
            "memorise_target": args.memorise_target,
            "memorise_max_epochs": args.memorise_max_epochs,
            "memorise_round": args.memorise_round,
            "wall_seconds": time.perf_counter() - start,
            "torch_threads": torch.get_num_threads(),
            **study,
        }
        write_record(args.survival_out, "ownership_survival", loadavg_start, fields)

    study = survival_study(config, args, console, record)
    record(study, complete=True)
    console.print(study["removal_markdown"])
    console.print(study["memorising_markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
