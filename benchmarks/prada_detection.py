"""PRADA on Fashion-MNIST: false-positive rate over many benign callers, detection of thieves.

The tournament plays one benign caller per match, too few to estimate a false-positive rate. This
plays, against the default victim (``VictimSpec()``, in process) behind ``prada`` at each
threshold ``delta`` (response "flag", so every stream runs to the end):

* ``--streams`` benign callers: the test images in a fresh random order each;
* three natural-pool thieves (Knockoff-style): the attacker pool in random order;
* three synthetic thieves (JBDA-style): 100 pool seeds, then rounds in which every query so far
  is stepped by ``+-0.1`` along the sign of the input gradient of a randomly initialised
  substitute's predicted class, as Papernot's Jacobian augmentation does with a substitute that
  is still learning.

Each stream sends ``--queries`` images in batches of 256 on its own account and reports whether
and after how many queries it was flagged.

Usage (from the repository root)::

    python benchmarks/prada_detection.py [--deltas 0.9 0.93 0.96] [--streams 20]
        [--queries 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine_info
from rich.console import Console
from rich.table import Table

from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.models import build_model
from arena.oracle import InputSpec, Oracle
from arena.service import VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import default_victim_cache, load_or_train

BATCH = 256
THIEF_STREAMS = 3
JBDA_SEEDS = 100
JBDA_STEP = 0.1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prada_detection.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.9, 0.93, 0.96])
    parser.add_argument("--streams", type=int, default=20, help="benign callers per delta")
    parser.add_argument("--queries", type=int, default=5000, help="images per caller")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="3 benign callers of 600 (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.queries = 3, 600
    if args.streams < 1 or args.queries < 1 or not all(0 < d < 1 for d in args.deltas):
        parser.error("--streams and --queries must be >= 1 and every delta in (0, 1)")
    return args


def shuffled(images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-count // len(images)))])
    return images[torch.from_numpy(order[:count])]


def jacobian_augmented(pool: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """JBDA-style synthetic queries: seeds, then sign-gradient steps of every query so far."""
    generator = torch.Generator().manual_seed(seed)
    substitute = build_model("lenet5", tuple(pool.shape[1:]), 10, seed=seed)
    queries = pool[torch.randperm(len(pool), generator=generator)[:JBDA_SEEDS]]
    while len(queries) < count:
        x = queries.clone().requires_grad_(True)
        logits = substitute(x)
        picked = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        (gradient,) = torch.autograd.grad(picked, x)
        step = JBDA_STEP * gradient.sign()
        queries = torch.cat([queries, (queries + step).clamp(0.0, 1.0).detach()])
    return queries[:count]


def streams(data: DataSplits, args: argparse.Namespace) -> dict[str, list[torch.Tensor]]:
    n = args.queries
    return {
        "benign": [shuffled(data.test.x, n, seed) for seed in range(args.streams)],
        "natural pool": [shuffled(data.attacker_pool.x, n, 100 + s) for s in range(THIEF_STREAMS)],
        "synthetic (JBDA-style)": [
            jacobian_augmented(data.attacker_pool.x, n, 200 + s) for s in range(THIEF_STREAMS)
        ],
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = load_dataset("fashion_mnist")
    victim = load_or_train(VictimSpec(), data, default_victim_cache())
    callers = streams(data, args)
    results: dict[str, Any] = {}
    for delta in args.deltas:
        chain = build_chain([PluginSpec(name="prada", params={"delta": delta})])
        service = VictimService(
            victim.model, chain, InputSpec(shape=data.input_shape), data.num_classes
        )
        per_kind: dict[str, Any] = {}
        for kind, inputs in callers.items():
            flagged_after: list[int | None] = []
            for index, x in enumerate(inputs):
                account = f"{kind}-{index}"
                service.open_account(account, len(x))
                Oracle(service, account).query_all(x, BATCH)
                flagged_after.append(service.account_stats(account).detected_after)
            hits = [q for q in flagged_after if q is not None]
            per_kind[kind] = {
                "callers": len(inputs),
                "flagged": len(hits),
                "rate": len(hits) / len(inputs),
                "median_queries_to_flag": statistics.median(hits) if hits else None,
                "flagged_after": flagged_after,
            }
        results[str(delta)] = per_kind
        console.log(
            f"delta {delta}: "
            + ", ".join(f"{k} {v['flagged']}/{v['callers']}" for k, v in per_kind.items())
        )
    return results


def print_table(results: dict[str, Any], console: Console) -> None:
    table = Table(title="PRADA: callers flagged (median queries to the flag)")
    table.add_column("delta", justify="right")
    kinds = list(next(iter(results.values())))
    for kind in kinds:
        table.add_column(kind, justify="right")
    for delta, per_kind in results.items():
        cells = []
        for kind in kinds:
            entry = per_kind[kind]
            median = entry["median_queries_to_flag"]
            tail = f" ({median:.0f})" if median is not None else ""
            cells.append(f"{entry['flagged']}/{entry['callers']}{tail}")
        table.add_row(delta, *cells)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console()
    loadavg_start = os.getloadavg()
    results = run(args, console)
    print_table(results, console)
    record = {
        "benchmark": "prada_detection",
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished": datetime.now(UTC).isoformat(),
        "machine": machine_info(loadavg_start),
        "queries_per_caller": args.queries,
        "batch": BATCH,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
