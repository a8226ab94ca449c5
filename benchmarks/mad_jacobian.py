"""Per-sample Jacobian Grams for MAD and GRAD²: the batched methods against a per-sample loop.

Both gradient-aware defenses need, per query, the Gram matrix of the surrogate's log-probability
Jacobian (:mod:`arena.defenses.jacobians`). This times, on the same Fashion-MNIST-shaped inputs
and interleaved round by round: the layer-wise batched method the defenses use
(:func:`per_sample_gram`), ``torch.func`` ``vmap`` over ``jacrev`` (:func:`per_sample_gram_func`,
at several chunk sizes) and the one-sample-at-a-time reference (:func:`per_sample_gram_loop`). It
reports milliseconds per query, the speed-up over the loop, and the largest difference from the
loop's result. One torch thread, like the victim service.

It also times both defenses' whole answer (``respond``: the Gram plus choosing and taking the
step) with the same surrogate on the same queries, as ``× floor``: their cost over the layer-wise
Gram they cannot avoid. The MLP rows are the cheap-surrogate option (``surrogate_arch: mlp``).

Usage (from the repository root)::

    python benchmarks/mad_jacobian.py [--rounds 5] [--batch 256] [--out FILE] [--quick]
    python benchmarks/mad_jacobian.py --render benchmarks/results/mad_jacobian.json   # docs table
"""

from __future__ import annotations

import argparse
import functools
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
from machine import git_commit, machine_info
from rich.console import Console
from rich.table import Table
from torch import nn

from arena.defenses import DEFENSES
from arena.defenses.jacobians import per_sample_gram, per_sample_gram_func, per_sample_gram_loop
from arena.defenses.surrogate import SurrogateGradientDefense
from arena.models import build_model
from arena.registry import build_plugin

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10
ARCHS = ("lenet5", "mlp")
CHUNK_SIZES = (2, 8, 32)
DEFENSE_NAMES = ("mad", "gradient_redirection")
Method = Callable[[nn.Module, torch.Tensor], torch.Tensor]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mad_jacobian.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="queries per timed call")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 32 queries (smoke)")
    parser.add_argument("--render", type=Path, help="print the docs table of a written JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch = 2, 32
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be >= 1")
    return args


def methods() -> dict[str, Method]:
    chosen: dict[str, Method] = {
        "loop": per_sample_gram_loop,
        "layerwise": per_sample_gram,
    }
    for size in CHUNK_SIZES:
        chosen[f"torch.func/{size}"] = functools.partial(per_sample_gram_func, chunk_size=size)
    return chosen


def answering(model: nn.Module, probs: torch.Tensor) -> dict[str, Method]:
    """Each gradient defense's whole answer with ``model`` as its surrogate."""
    chosen: dict[str, Method] = {}
    for name in DEFENSE_NAMES:
        defense = build_plugin(DEFENSES, name, {})
        assert isinstance(defense, SurrogateGradientDefense)
        defense.models["surrogate"] = model
        chosen[f"{name}.respond"] = respond_of(defense, probs)
    return chosen


def respond_of(defense: SurrogateGradientDefense, probs: torch.Tensor) -> Method:
    def respond(_: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return defense.respond(probs[: len(x)], x, None)

    return respond


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    x = torch.rand(args.batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(3 * torch.randn(args.batch, CLASSES, generator=torch.Generator()), 1)
    results: dict[str, Any] = {}
    for arch in ARCHS:
        model = build_model(arch, INPUT_SHAPE, CLASSES, seed=0)
        model.requires_grad_(False)
        chosen = methods() | answering(model, probs)
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
        floor_ms = statistics.median(seconds["layerwise"]) / args.batch * 1e3
        rows = {}
        for name in names:
            ms = statistics.median(seconds[name]) / args.batch * 1e3
            answer = name.endswith(".respond")
            rows[name] = {
                "ms_per_query": ms,
                "speedup_vs_loop": loop_ms / ms,
                "times_floor": ms / floor_ms,
                "max_abs_diff_vs_loop": (
                    None if answer else float((outputs[name] - outputs["loop"]).abs().max())
                ),
                "seconds": seconds[name],
            }
        params = sum(p.numel() for p in model.parameters())
        results[arch] = {"parameters": params, "methods": rows}
    return results


def print_table(results: dict[str, Any], console: Console) -> None:
    table = Table(title="per-sample Jacobian Gram: ms per query (median), speed-up vs loop")
    for column in (
        "surrogate",
        "params",
        "method",
        "ms/query",
        "speed-up",
        "× floor",
        "max |diff|",
    ):
        table.add_column(column, justify="left" if column in ("surrogate", "method") else "right")
    for arch, entry in results.items():
        for name, row in entry["methods"].items():
            diff = row.get("max_abs_diff_vs_loop")
            table.add_row(
                arch,
                f"{entry['parameters']:,}",
                name,
                f"{row['ms_per_query']:.3f}",
                f"{row['speedup_vs_loop']:.2f}x",
                f"{row['times_floor']:.2f}x" if "times_floor" in row else "",
                "" if diff is None else f"{diff:.1e}",
            )
    console.print(table)


def render(path: Path) -> str:
    """The docs table of a written JSON (rendered, never retyped)."""
    record = json.loads(path.read_text())
    lines = [
        "| surrogate | parameters | method | ms/query | speed-up vs loop | × floor "
        "| max abs diff vs loop |",
        "|:---|---:|:---|---:|---:|---:|---:|",
    ]
    for arch, entry in record["results"].items():
        for name, row in entry["methods"].items():
            diff = row.get("max_abs_diff_vs_loop")
            lines.append(
                f"| {arch} | {entry['parameters']:,} | {name} | {row['ms_per_query']:.3f} "
                f"| {row['speedup_vs_loop']:.2f}× | {row['times_floor']:.2f}× "
                f"| {'—' if diff is None else f'{diff:.1e}'} |"
            )
    load = record["machine"]["loadavg_start"][0], record["machine"]["loadavg_end"][0]
    lines.append("")
    lines.append(
        f"_Measured {record['finished'][:16].replace('T', ' ')} UTC at commit "
        f"{record['commit']}, batch {record['batch']}, {record['rounds']} rounds, load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end._"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        print(render(args.render))
        return
    loadavg_start = os.getloadavg()
    results = run(args)
    print_table(results, Console())
    record = {
        "benchmark": "mad_jacobian",
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
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
