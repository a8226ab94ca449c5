"""Tramèr et al. (USENIX Security 2016) on Fashion-MNIST: equation solving and retraining.

Two victims, trained on the victim split and cached like every victim (``load_or_train``):

* a ``softmax_regression`` victim attacked by ``equation_solving`` with ``(d + 1)·k = 7,850``
  queries (and with ``d + 1 = 785``, the fewest that determine every class's log-odds), then
  behind ``rounding`` at each of ``--decimals``: fidelity, stolen accuracy, the largest absolute
  error of the recovered parameters after removing the softmax's shift (both sides centred over
  the classes), relative to the largest victim parameter too, and the queries spent, over
  ``--seeds``. Every rounding setting is played twice: with queries from the whole input box
  (the paper) and from a box a tenth the size (``spread=0.1``), whose answers are less
  saturated;
* an ``mlp`` victim attacked by ``retraining`` — ``uniform``, ``line_search`` (the paper's
  straight-line search), ``line_search`` with ``path=crossover`` and ``uniform`` with
  ``spread=0.1`` — at each of ``--budgets``: stolen accuracy, fidelity on the test set and on
  10,000 uniform random inputs (the paper's ``R_unif``), queries and seconds, over
  ``--retraining-seeds`` (one by default: the run would not fit in minutes). The substitute is
  trained for 10 epochs at batch 128 (3 per adaptive round), cheaper than the attack's defaults,
  to keep the run within minutes on two cores.

Every attack runs in this process against a victim service from
:func:`arena.service_factory.build_service`, with the referee's attacker randomness
(:func:`arena.referee.attacker_rng`), one torch thread.

Usage (from the repository root)::

    python benchmarks/classic_extraction.py [--budgets 1000 5000 10000] [--decimals 4 3 2 1]
        [--seeds 0 1 2] [--retraining-seeds 0] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import write_record
from rich.console import Console
from rich.table import Table
from torch import nn

import agents  # noqa: F401  (registers the attacks)
from agents.equation_solving import uniform_inputs
from arena.attacker import ATTACKS
from arena.data import DataSplits, load_dataset
from arena.identities import attacker_id
from arena.knowledge import Knowledge
from arena.metrics import agreement
from arena.oracle import InputSpec, Oracle
from arena.registry import build_plugin
from arena.seeds import attacker_rng
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.training import accuracy, predict_probs
from arena.victims import default_victim_cache, load_or_train

DATASET = "fashion_mnist"
SOFTMAX_VICTIM = VictimSpec(dataset=DATASET, arch="softmax_regression", epochs=5)
MLP_VICTIM = VictimSpec(dataset=DATASET, arch="mlp", epochs=5)
TRAINING: dict[str, Any] = {"epochs": 10, "batch_size": 128, "round_epochs": 3}
"""cheaper than the attack's defaults (50 epochs at batch 64), so the run fits in minutes"""
RETRAINING_VARIANTS: dict[str, dict[str, Any]] = {
    "uniform": {"strategy": "uniform", **TRAINING},
    "line_search": {"strategy": "line_search", **TRAINING},
    "line_search/crossover": {"strategy": "line_search", "path": "crossover", **TRAINING},
    "uniform/spread=0.1": {"strategy": "uniform", "spread": 0.1, **TRAINING},
}
SMALL_BOX = 0.1
"""the equation-solving spread of the rounding rows' second series"""
UNIFORM_EVAL = 10_000
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "classic_extraction.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--decimals", type=int, nargs="+", default=[4, 3, 2, 1])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="equation-solving seeds"
    )
    parser.add_argument("--retraining-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="one 500-query budget (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budgets, args.decimals, args.seeds = [500], [2], [0]
    if min(args.budgets) < 1:
        parser.error("--budgets must be >= 1")
    return args


def steal(
    victim: VictimSpec,
    defenses: Sequence[PluginSpec],
    attack: str,
    params: dict[str, Any],
    budget: int,
    seed: int,
    data: DataSplits,
    cache: Path,
) -> tuple[nn.Module, int, float]:
    """Play the attack against a fresh service as the referee would; the substitute, queries used
    and seconds."""
    spec = MatchSpec(
        victim=victim,
        defenses=tuple(defenses),
        attack=PluginSpec(name=attack, params=params),
        budget=budget,
        seed=seed,
    )
    service = build_service(spec.victim, spec.defenses, data, cache)
    identity = attacker_id(spec)
    service.open_account(identity, budget)
    knowledge = Knowledge(
        pool=data.attacker_pool.x,
        pool_name=spec.pool,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        substitute_arch=victim.arch,
    )
    attacker = build_plugin(ATTACKS, attack, params)
    start = time.perf_counter()
    model = attacker.steal(Oracle(service, identity), knowledge, attacker_rng(spec))
    seconds = time.perf_counter() - start
    return model, service.account_stats(identity).used, seconds


def centred_parameters(model: nn.Module) -> torch.Tensor:
    """``[k, d + 1]`` weights and bias of a softmax regression, minus their mean over classes."""
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    theta = torch.cat([linear.weight, linear.bias[:, None]], dim=1).detach().double()
    return theta - theta.mean(dim=0, keepdim=True)


def equation_solving_rows(
    args: argparse.Namespace, data: DataSplits, cache: Path
) -> tuple[float, list[dict[str, Any]]]:
    victim = load_or_train(SOFTMAX_VICTIM, data, cache)
    victim_probs = predict_probs(victim.model, data.test.x)
    truth = centred_parameters(victim.model)
    dim = int(np.prod(data.input_shape))
    unknowns = (dim + 1) * data.num_classes
    settings: list[tuple[str, list[PluginSpec], dict[str, Any]]] = [
        ("none", [], {"queries": dim + 1}),
        ("none", [], {}),
    ]
    for spread in (1.0, SMALL_BOX):
        for decimals in args.decimals:
            rounding = PluginSpec(name="rounding", params={"decimals": decimals})
            params = {} if spread == 1.0 else {"spread": spread}
            settings.append((f"rounding({decimals})", [rounding], params))
    rows = []
    for defense, chain, params in settings:
        runs = []
        for seed in args.seeds:
            model, used, seconds = steal(
                SOFTMAX_VICTIM, chain, "equation_solving", params, unknowns, seed, data, cache
            )
            probs = predict_probs(model, data.test.x)
            error = float((centred_parameters(model) - truth).abs().max())
            runs.append(
                {
                    "seed": seed,
                    "fidelity": agreement(probs, victim_probs),
                    "stolen_accuracy": accuracy(probs, data.test.y),
                    "max_param_error": error,
                    "relative_param_error": error / float(truth.abs().max()),
                    "queries": used,
                    "seconds": seconds,
                }
            )
        rows.append({"defense": defense, "params": params, "runs": runs})
        print(f"  equation_solving {defense} {params}: {summary(runs, 'fidelity', 4)} fidelity")
    return victim.test_accuracy, rows


def retraining_rows(
    args: argparse.Namespace, data: DataSplits, cache: Path
) -> tuple[float, list[dict[str, Any]]]:
    victim = load_or_train(MLP_VICTIM, data, cache)
    victim_probs = predict_probs(victim.model, data.test.x)
    spec = InputSpec(shape=data.input_shape)
    uniform_x = uniform_inputs(np.random.default_rng(2016), UNIFORM_EVAL, spec)
    victim_uniform = predict_probs(victim.model, uniform_x)
    rows = []
    for budget in args.budgets:
        for variant, params in RETRAINING_VARIANTS.items():
            runs = []
            for seed in args.retraining_seeds:
                model, used, seconds = steal(
                    MLP_VICTIM, [], "retraining", params, budget, seed, data, cache
                )
                probs = predict_probs(model, data.test.x)
                runs.append(
                    {
                        "seed": seed,
                        "stolen_accuracy": accuracy(probs, data.test.y),
                        "fidelity": agreement(probs, victim_probs),
                        "uniform_fidelity": agreement(
                            predict_probs(model, uniform_x), victim_uniform
                        ),
                        "queries": used,
                        "seconds": seconds,
                    }
                )
            rows.append({"variant": variant, "params": params, "budget": budget, "runs": runs})
            print(f"  retraining {variant} at {budget}: {summary(runs, 'fidelity')} fidelity")
    return victim.test_accuracy, rows


def summary(runs: Sequence[dict[str, Any]], key: str, digits: int = 3) -> str:
    """Mean ± standard deviation over seeds (just the value for one seed)."""
    values = [float(run[key]) for run in runs]
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def print_tables(results: dict[str, Any], console: Console) -> None:
    es = results["equation_solving"]
    victim_accuracy = es["victim_accuracy"]
    table = Table(
        title=f"equation_solving vs softmax_regression (victim accuracy {victim_accuracy:.4f})"
    )
    columns = (
        "defense",
        "spread",
        "queries",
        "fidelity",
        "stolen acc",
        "max |Δθ|",
        "rel |Δθ|",
        "seconds",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "defense" else "right")
    for row in es["rows"]:
        runs = row["runs"]
        table.add_row(
            row["defense"],
            str(row["params"].get("spread", 1.0)),
            f"{statistics.fmean(r['queries'] for r in runs):,.0f}",
            summary(runs, "fidelity", 4),
            summary(runs, "stolen_accuracy", 4),
            f"{max(r['max_param_error'] for r in runs):.2e}",
            f"{max(r['relative_param_error'] for r in runs):.2e}",
            summary(runs, "seconds", 2),
        )
    console.print(table)
    rt = results["retraining"]
    table = Table(title=f"retraining vs mlp (victim accuracy {rt['victim_accuracy']:.4f})")
    for column in (
        "strategy",
        "budget",
        "queries",
        "stolen acc",
        "fidelity",
        "unif. fid.",
        "seconds",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rt["rows"]:
        runs = row["runs"]
        table.add_row(
            row["variant"],
            f"{row['budget']:,}",
            f"{statistics.fmean(r['queries'] for r in runs):,.0f}",
            summary(runs, "stolen_accuracy"),
            summary(runs, "fidelity"),
            summary(runs, "uniform_fidelity"),
            summary(runs, "seconds", 1),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    loadavg_start = os.getloadavg()
    started = time.perf_counter()
    data = load_dataset(DATASET)
    cache = default_victim_cache()
    es_accuracy, es_rows = equation_solving_rows(args, data, cache)
    rt_accuracy, rt_rows = retraining_rows(args, data, cache)
    results = {
        "equation_solving": {
            "victim": SOFTMAX_VICTIM.model_dump(mode="json"),
            "victim_accuracy": es_accuracy,
            "rows": es_rows,
        },
        "retraining": {
            "victim": MLP_VICTIM.model_dump(mode="json"),
            "victim_accuracy": rt_accuracy,
            "uniform_eval_inputs": UNIFORM_EVAL,
            "rows": rt_rows,
        },
    }
    print_tables(results, Console(width=120))
    write_record(
        args.out,
        "classic_extraction",
        loadavg_start,
        {
            "wall_seconds": time.perf_counter() - started,
            "seeds": args.seeds,
            "retraining_seeds": args.retraining_seeds,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
