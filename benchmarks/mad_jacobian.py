"""Per-sample Jacobian Grams for MAD and GRAD²: the batched methods against a per-sample loop.

Both gradient-aware defenses need, per query, the Gram matrix of the surrogate's log-probability
Jacobian (:mod:`arena.defenses.jacobians`). This times, on the same Fashion-MNIST-shaped inputs
and interleaved round by round: the layer-wise batched method the defenses use
(:func:`per_sample_gram`), ``torch.func`` ``vmap`` over ``jacrev`` (:func:`per_sample_gram_func`,
at several chunk sizes) and the one-sample-at-a-time reference (:func:`per_sample_gram_loop`). It
reports milliseconds per query, the speed-up over the loop, and the largest difference from the
loop's result. One torch thread, like the victim service.

Usage (from the repository root)::

    python benchmarks/mad_jacobian.py [--rounds 5] [--batch 256] [--out FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from machine import machine_info
from rich.console import Console
from rich.table import Table
from torch import nn

from arena.defenses.jacobians import per_sample_gram, per_sample_gram_func, per_sample_gram_loop
from arena.models import build_model

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
ARCHS = ("lenet5", "mlp")
CHUNK_SIZES = (2, 8, 32)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mad_jacobian.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="queries per timed call")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 32 queries (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch = 2, 32
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be >= 1")
    return args


def methods() -> dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    chosen: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
        "loop": per_sample_gram_loop,
        "layerwise": per_sample_gram,
    }
    for size in CHUNK_SIZES:
        chosen[f"torch.func/{size}"] = lambda m, x, size=size: per_sample_gram_func(m, x, size)
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    x = torch.rand(args.batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    results: dict[str, Any] = {}
    for arch in ARCHS:
        model = build_model(arch, INPUT_SHAPE, CLASSES, seed=0)
        chosen = methods()
        for method in chosen.values():  # warm-up (torch.func traces on first use)
            method(model, x[:8])
        seconds: dict[str, list[float]] = {name: [] for name in chosen}
        outputs: dict[str, torch.Tensor] = {}
        names = list(chosen)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                outputs[name] = chosen[name](model, x)
                seconds[name].append(time.perf_counter() - start)
        loop_ms = statistics.median(seconds["loop"]) / args.batch * 1e3
        rows = {}
        for name in names:
            ms = statistics.median(seconds[name]) / args.batch * 1e3
            rows[name] = {
                "ms_per_query": ms,
                "speedup_vs_loop": loop_ms / ms,
                "max_abs_diff_vs_loop": float((outputs[name] - outputs["loop"]).abs().max()),
                "seconds": seconds[name],
            }
        params = sum(p.numel() for p in model.parameters())
        results[arch] = {"parameters": params, "methods": rows}
    return results


def print_table(results: dict[str, Any], console: Console) -> None:
    table = Table(title="per-sample Jacobian Gram: ms per query (median), speed-up vs loop")
    for column in ("surrogate", "params", "method", "ms/query", "speed-up", "max |diff|"):
        table.add_column(column, justify="left" if column in ("surrogate", "method") else "right")
    for arch, entry in results.items():
        for name, row in entry["methods"].items():
            table.add_row(
                arch,
                f"{entry['parameters']:,}",
                name,
                f"{row['ms_per_query']:.2f}",
                f"{row['speedup_vs_loop']:.2f}x",
                f"{row['max_abs_diff_vs_loop']:.1e}",
            )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    loadavg_start = os.getloadavg()
    results = run(args)
    print_table(results, Console())
    record = {
        "benchmark": "mad_jacobian",
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished": datetime.now(UTC).isoformat(),
        "machine": machine_info(loadavg_start),
        "batch": args.batch,
        "rounds": args.rounds,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
