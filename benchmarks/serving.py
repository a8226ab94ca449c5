"""Serving throughput: the raw forward pass against the victim service, in process and on Ray.

Six ways of getting probabilities out of the same victim, each measured at batch sizes 1, 64
and 256 in queries (images) per second:

* ``raw``: ``torch.softmax(model(x))`` under ``no_grad`` in this process (the ceiling);
* ``inproc-none`` / ``inproc-reverse_sigmoid``: :class:`arena.service.VictimService` behind an
  :class:`arena.oracle.Oracle` in this process (validation, charging, ledger, defense chain);
* ``ray-none`` / ``ray-reverse_sigmoid``: the same service hosted in a Ray actor
  (:func:`orchestration.ray_service.start_victim_service`) reached through
  :class:`orchestration.ray_service.RayServiceProxy` and an ``Oracle``;
* ``ray-floor``: the raw forward pass in a bare Ray actor (the batch goes as a numpy array, the
  softmax comes back): what Ray's transport alone costs, the ceiling of any service on Ray;
* ``*-pipelined``: the same Ray actors fed a stream of :data:`STREAM_ROWS` images per call, in
  batches of the batch size: ``Oracle.query_all`` for the service (what attacks call: several
  batches an actor call, two calls in flight), the same grouping of batches and two outstanding
  calls for the bare actor.

Measurements are interleaved: every round measures every (batch size, variant) pair once for
``--seconds``, the variant order rotating from round to round, so machine noise hits all variants
alike. The reported figure is the median over rounds; ratios are taken against ``raw`` at the
same batch size, and Ray against in-process for the same defense.

Usage (from the repository root)::

    python benchmarks/serving.py [--dataset fashion_mnist] [--seconds 3] [--rounds 5]
                                 [--out benchmarks/results/serving.json] [--quick] [--markdown]
                                 [--only raw ray-none ray-none-pipelined ...]
    python benchmarks/serving.py --render benchmarks/results/serving_floor.json   # docs table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from machine import git_commit, machine_info
from rich.console import Console
from rich.table import Table
from torch import nn

from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.ledger import Ledger
from arena.oracle import PIPELINE_DEPTH, InputSpec, Oracle, fills_a_call
from arena.service import ServiceAPI, VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import (
    TrainedVictim,
    build_victim_model,
    default_victim_cache,
    load_or_train,
)
from orchestration.ray_service import RayServiceProxy, start_victim_service

LEDGER_LABEL = ("in-process service, ledger file", "-ledger_file")
RAY_LEDGER_LABEL = ("Ray actor service, ledger file, restarts", "-ledger_file")
BATCH_SIZES: tuple[int, ...] = (1, 64, 256)
RAY_CPUS = 8
"""logical CPUs of the benchmark's Ray: one per actor (each reserves one), so all of them start;
the machine's two cores are shared either way, and variants are measured one at a time"""
DEFENSES: tuple[str, ...] = ("none", "reverse_sigmoid")
ATTACKER = "benchmark"
BUDGET = 10**15
"""Every oracle call is charged; no run of this benchmark comes near this many queries."""
DISTINCT_BATCHES = 4
"""Each variant cycles through this many different input batches of the test set."""
STREAM_ROWS = 2048
"""images per call of a pipelined variant, in batches of the batch size (an attack's
``query_all`` streams its transfer set: 1,000 to 10,000 images at the default budgets)"""
OBJECT_STORE_BYTES = 512 * 1024**2
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"

QueryFn = Callable[[torch.Tensor], torch.Tensor]
StreamFn = Callable[[torch.Tensor, int], torch.Tensor]
"""``query_all(x, batch_size)``"""


@dataclass
class Variant:
    """One way of serving the victim, and how to read what its ledger charged."""

    key: str
    label: str
    where: str
    """``raw``, ``in-process`` or ``ray``"""
    defense: str | None
    query: QueryFn
    charged: Callable[[], int] | None = None
    sent: int = 0
    """queries (images) sent, warm-up included, to compare against the ledger"""
    qps: dict[int, list[float]] = field(default_factory=dict)
    calls: dict[int, list[int]] = field(default_factory=dict)
    stream: StreamFn | None = None
    """pipelined: each call is a stream of :data:`STREAM_ROWS` images through this, not one
    batch through ``query``"""


@dataclass(frozen=True)
class Settings:
    dataset: str
    arch: str | None
    seconds: float
    rounds: int
    warmup: float
    quick: bool
    out: Path
    markdown: bool
    render: Path | None = None
    only: tuple[str, ...] = ()


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Queries per second of the raw victim, the victim service and its Ray actor."
    )
    parser.add_argument("--dataset", default=VictimSpec().dataset, help="victim dataset")
    parser.add_argument(
        "--arch", default=None, help="victim architecture (default: the VictimSpec default)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="seconds per measurement (one variant, one batch size, one round); "
        "default 3, or 0.5 with --quick",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds; default 5, or 3 with --quick"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.3, help="warm-up seconds per variant and batch size"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 1-epoch victim and short measurements (a smoke test, not a result)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--render", type=Path, help="print the docs table of a written JSON")
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="VARIANT", help="measure only these variants"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    if seconds <= 0 or rounds < 1 or args.warmup < 0:
        parser.error("--seconds must be > 0, --rounds >= 1 and --warmup >= 0")
    return Settings(
        dataset=args.dataset,
        arch=args.arch,
        seconds=seconds,
        rounds=rounds,
        warmup=args.warmup,
        quick=args.quick,
        out=args.out,
        markdown=args.markdown,
        render=args.render,
        only=tuple(args.only),
    )


def victim_spec(settings: Settings) -> VictimSpec:
    overrides: dict[str, Any] = {"dataset": settings.dataset}
    if settings.arch is not None:
        overrides["arch"] = settings.arch
    if settings.quick:
        overrides["epochs"] = 1
    return VictimSpec(**overrides)


def raw_query(model: nn.Module) -> QueryFn:
    """The ceiling: the model's softmax in this process, no validation, ledger or defense."""

    @torch.no_grad()
    def query(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    return query


def defenses_for(name: str) -> tuple[PluginSpec, ...]:
    return (PluginSpec(name=name),)


def streamed(query_all: StreamFn) -> QueryFn:
    """A pipelined variant's one-batch call (the output check): its stream of one batch."""
    return lambda x: query_all(x, int(x.shape[0]))


def metered_variant(
    service: ServiceAPI,
    where: str,
    label: str,
    defense: str,
    suffix: str = "",
    pipelined: bool = False,
) -> Variant:
    """An oracle on any victim service (in process or a Ray proxy) with the benchmark's account;
    ``pipelined``: each call streams batches through ``query_all``."""
    attacker = f"{ATTACKER}-pipelined" if pipelined else ATTACKER
    service.open_account(attacker, BUDGET)
    oracle = Oracle(service, attacker)
    prefix = "inproc" if where == "in-process" else where
    return Variant(
        key=f"{prefix}-{defense}{suffix}{'-pipelined' if pipelined else ''}",
        label=f"{label}, {defense}{', query_all pipelined' if pipelined else ''}",
        where=where,
        defense=defense,
        query=streamed(oracle.query_all) if pipelined else oracle.query,
        charged=lambda: service.account_stats(attacker).used,
        stream=oracle.query_all if pipelined else None,
    )


def in_process_variant(
    model: nn.Module, data: DataSplits, defense: str, ledger_file: Path | None = None
) -> Variant:
    """``ledger_file``: the ledger on disk, as tournaments keep it (default: in memory)."""
    chain = build_chain(defenses_for(defense))
    service = VictimService(
        model,
        chain,
        InputSpec(shape=data.input_shape),
        data.num_classes,
        ledger=Ledger(ledger_file),
    )
    label, suffix = ("in-process service", "") if ledger_file is None else LEDGER_LABEL
    return metered_variant(service, "in-process", label, defense, suffix)


def ray_variant(
    victim: TrainedVictim,
    state: ray.ObjectRef[dict[str, torch.Tensor]],
    data: DataSplits,
    defense: str,
    ledger_file: Path | None = None,
    pipelined: bool = False,
) -> Variant:
    """``ledger_file``: as tournaments run it, with the ledger on disk and restarts allowed."""
    handle = start_victim_service(
        victim.spec,
        defenses_for(defense),
        state,
        InputSpec(shape=data.input_shape),
        data.num_classes,
        num_cpus=1,
        ledger_path=ledger_file,
        max_restarts=0 if ledger_file is None else 3,
    )
    label, suffix = ("Ray actor service", "") if ledger_file is None else RAY_LEDGER_LABEL
    return metered_variant(RayServiceProxy(handle), "ray", label, defense, suffix, pipelined)


class RawForward:
    """The victim's forward pass in an actor and nothing else: Ray's transport floor."""

    def __init__(self, spec: VictimSpec, state: dict[str, torch.Tensor], shape: Any, classes: int):
        torch.set_num_threads(1)
        self.model = build_victim_model(spec, tuple(shape), classes, state).eval()

    def query(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad(), warnings.catch_warnings():
            # Ray hands the batch over read-only and without a copy; the model only reads it
            warnings.simplefilter("ignore", UserWarning)
            probs: np.ndarray = torch.softmax(self.model(torch.from_numpy(x)), dim=1).numpy()
        return probs

    def query_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Several batches in one call, as the victim service's ``answer_many``."""
        return [self.query(x) for x in batches]


def ray_floor_variant(
    victim: TrainedVictim,
    state: ray.ObjectRef[dict[str, torch.Tensor]],
    data: DataSplits,
    pipelined: bool = False,
) -> Variant:
    """``pipelined``: streams of batches, grouped into calls as ``Oracle.query_all`` groups
    them, two calls in flight (the ceiling of a pipelining oracle)."""
    actor_cls: Any = ray.remote(num_cpus=1)(RawForward)
    actor = actor_cls.remote(victim.spec, state, data.input_shape, data.num_classes)

    def query(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(ray.get(actor.query.remote(x.numpy())))

    def query_all(x: torch.Tensor, size: int) -> torch.Tensor:
        in_flight: deque[ray.ObjectRef[list[np.ndarray]]] = deque()
        answers: list[np.ndarray] = []
        call: list[np.ndarray] = []
        for start in range(0, int(x.shape[0]), size):
            call.append(x[start : start + size].numpy())
            if fills_a_call(call) or start + size >= int(x.shape[0]):
                in_flight.append(actor.query_many.remote(call))
                call = []
            if len(in_flight) >= PIPELINE_DEPTH:
                answers += ray.get(in_flight.popleft())
        while in_flight:
            answers += ray.get(in_flight.popleft())
        return torch.from_numpy(np.concatenate(answers))

    if pipelined:
        label = "raw forward pass in a bare Ray actor, batches grouped, two calls in flight"
        query = streamed(query_all)
        return Variant("ray-floor-pipelined", label, "ray", None, query, stream=query_all)
    return Variant("ray-floor", "raw forward pass in a bare Ray actor", "ray", None, query)


def input_batches(data: DataSplits, batch_size: int) -> list[torch.Tensor]:
    """A few distinct, valid query batches from the test split."""
    x = data.test.x
    count = min(DISTINCT_BATCHES, max(1, int(x.shape[0]) // batch_size))
    return [x[i * batch_size : (i + 1) * batch_size].contiguous() for i in range(count)]


def run_for(variant: Variant, batches: Sequence[torch.Tensor], seconds: float) -> tuple[int, float]:
    """Call the variant back to back for ``seconds``; return the batches answered and the time
    taken (a pipelined variant streams :data:`STREAM_ROWS` images a call)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    size = int(batches[0].shape[0])
    per_call = max(1, STREAM_ROWS // size) if variant.stream is not None else 1
    stream = torch.cat([batches[i % len(batches)] for i in range(per_call)])
    while now < deadline or calls == 0:
        if variant.stream is not None:
            variant.stream(stream, size)
        else:
            variant.query(batches[calls % len(batches)])
        calls += 1
        now = time.perf_counter()
    variant.sent += calls * per_call * size
    return calls * per_call, now - start


def check_outputs(variants: Sequence[Variant], data: DataSplits) -> dict[str, Any]:
    """Every variant serves the same victim: undefended answers equal the raw softmax."""
    x = data.test.x[:64].contiguous()
    reference = variants[0].query(x)
    checks: dict[str, Any] = {}
    for variant in variants[1:]:
        out = variant.query(x)
        variant.sent += int(x.shape[0])
        max_diff = float((out - reference).abs().max())
        ones = torch.ones(len(out))
        checks[variant.key] = {
            "max_abs_diff_vs_raw": max_diff,
            "rows_sum_to_one": bool(torch.allclose(out.sum(dim=1), ones, atol=1e-4)),
            "argmax_agreement_vs_raw": float((out.argmax(1) == reference.argmax(1)).float().mean()),
        }
        if variant.defense == "none" and max_diff > 1e-5:
            raise AssertionError(f"{variant.key} differs from the raw forward pass by {max_diff}")
    return checks


def measure(
    variants: Sequence[Variant], data: DataSplits, settings: Settings, console: Console
) -> None:
    batches = {b: input_batches(data, b) for b in BATCH_SIZES}
    for b in BATCH_SIZES:
        for variant in variants:
            run_for(variant, batches[b], settings.warmup)
            variant.qps[b], variant.calls[b] = [], []
    for round_index in range(settings.rounds):
        shift = round_index % len(variants)
        order = [*variants[shift:], *variants[:shift]]
        for b in BATCH_SIZES:
            for variant in order:
                calls, elapsed = run_for(variant, batches[b], settings.seconds)
                variant.qps[b].append(calls * b / elapsed)
                variant.calls[b].append(calls)
        console.log(f"round {round_index + 1}/{settings.rounds} done")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def summarise(variants: Sequence[Variant]) -> dict[str, Any]:
    by_key = {v.key: v for v in variants}
    raw = by_key["raw"]
    results: dict[str, Any] = {}
    for v in variants:
        per_batch: dict[str, Any] = {}
        for b in BATCH_SIZES:
            median = statistics.median(v.qps[b])
            raw_median = statistics.median(raw.qps[b])
            paired = [ratio(q, r) for q, r in zip(v.qps[b], raw.qps[b], strict=True)]
            per_batch[str(b)] = {
                "qps_median": median,
                "qps_rounds": v.qps[b],
                "calls_rounds": v.calls[b],
                "us_per_call_median": 1e6 * b / median,
                "ratio_vs_raw": ratio(median, raw_median),
                "paired_ratio_vs_raw_median": statistics.median(paired),
            }
        results[v.key] = {
            "label": v.label,
            "where": v.where,
            "defense": v.defense,
            "batches": per_batch,
        }
    ray_vs_inproc: dict[str, dict[str, float]] = {}
    for defense in DEFENSES:
        ray_v, local = by_key.get(f"ray-{defense}"), by_key.get(f"inproc-{defense}")
        if ray_v is None or local is None:
            continue
        ray_vs_inproc[defense] = {
            str(b): ratio(statistics.median(ray_v.qps[b]), statistics.median(local.qps[b]))
            for b in BATCH_SIZES
        }
    floor = by_key.get("ray-floor")
    ray_vs_floor = {
        defense: {
            str(b): ratio(
                statistics.median(by_key[f"ray-{defense}"].qps[b]), statistics.median(floor.qps[b])
            )
            for b in BATCH_SIZES
        }
        for defense in DEFENSES
        if floor is not None and f"ray-{defense}" in by_key
    }
    ledger_cost = {
        where: {
            str(b): ratio(
                statistics.median(by_key[f"{where}-none"].qps[b]),
                statistics.median(by_key[f"{where}-none-ledger_file"].qps[b]),
            )
            for b in BATCH_SIZES
        }
        for where in ("inproc", "ray")
        if f"{where}-none-ledger_file" in by_key and f"{where}-none" in by_key
    }
    pipelined = {
        key: {
            str(b): ratio(
                statistics.median(by_key[f"{key}-pipelined"].qps[b]),
                statistics.median(by_key[key].qps[b]),
            )
            for b in BATCH_SIZES
        }
        for key in ("ray-none", "ray-none-ledger_file", "ray-floor")
        if key in by_key and f"{key}-pipelined" in by_key
    }
    return {
        "variants": results,
        "ray_vs_in_process": ray_vs_inproc,
        "ray_vs_floor": ray_vs_floor,
        "ledger_file_slowdown": ledger_cost,
        "pipelined_vs_one_at_a_time": pipelined,
    }


def ledgers(variants: Sequence[Variant]) -> dict[str, dict[str, int | bool]]:
    """What each service charged against what was sent: the ledger must be exact."""
    report: dict[str, dict[str, int | bool]] = {}
    for v in variants:
        if v.charged is None:
            continue
        charged = v.charged()
        report[v.key] = {"sent": v.sent, "charged": charged, "exact": charged == v.sent}
    return report


def format_qps(qps: float) -> str:
    return f"{qps:,.0f}"


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant"]
    for b in BATCH_SIZES:
        header += [f"B={b} q/s", f"B={b} ×raw", f"B={b} µs/call"]
    rows: list[list[str]] = []
    for key, entry in summary["variants"].items():
        row = [key]
        for b in BATCH_SIZES:
            cell = entry["batches"][str(b)]
            row += [
                format_qps(cell["qps_median"]),
                f"{cell['ratio_vs_raw']:.3f}",
                f"{cell['us_per_call_median']:,.0f}",
            ]
        rows.append(row)
    comparisons = (
        ("Ray ÷ in-process ({})", "ray_vs_in_process"),
        ("Ray ÷ Ray floor ({})", "ray_vs_floor"),
        ("pipelined ÷ one at a time ({})", "pipelined_vs_one_at_a_time"),
    )
    for name, comparison in comparisons:
        for defense, ratios in summary.get(comparison, {}).items():
            row = [name.format(defense)]
            for b in BATCH_SIZES:
                row += ["", f"{ratios[str(b)]:.3f}", ""]
            rows.append(row)
    return header, rows


def rich_table(summary: dict[str, Any], title: str) -> Table:
    header, rows = table_rows(summary)
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    n_variants = len(summary["variants"])
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == n_variants - 1)
    return table


def markdown_table(summary: dict[str, Any]) -> str:
    header, rows = table_rows(summary)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rendered(result: dict[str, Any]) -> str:
    """The docs table of a written JSON, stamped with its date, commit and command."""
    settings = result["settings"]
    stamp = (
        f"_Measured {result['date'][:16].replace('T', ' ')} UTC at commit "
        f"{result.get('commit', 'unknown')} (`{result['command']}`), {settings['rounds']} rounds "
        f"of {settings['seconds_per_measurement']:g} s, load average "
        f"{result['machine']['loadavg_start'][0]:.1f} at the start._"
    )
    return markdown_table(result) + "\n\n" + stamp + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.render:
        print(rendered(json.loads(settings.render.read_text())), end="")
        return 0
    command = shlex.join(["python", *(sys.argv if argv is None else ["serving.py", *argv])])
    console = Console() if sys.stdout.isatty() else Console(width=160)
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    loadavg_start = os.getloadavg()

    spec = victim_spec(settings)
    data = load_dataset(spec.dataset)
    console.log(f"victim {spec.dataset}/{spec.arch} key={spec.key()} (epochs={spec.epochs})")
    begin = time.perf_counter()
    victim = load_or_train(spec, data, default_victim_cache())
    console.log(
        f"victim {'loaded from cache' if victim.from_cache else 'trained'} in "
        f"{time.perf_counter() - begin:.1f} s, test accuracy {victim.test_accuracy:.4f}"
    )
    model = victim.model.eval()
    ledger_dir = Path(tempfile.mkdtemp(prefix="serving-ledgers-"))

    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level=logging.ERROR,
    )
    try:
        state = ray.put({k: v.detach().clone() for k, v in model.state_dict().items()})
        ledger_file = ledger_dir.joinpath
        builders: dict[str, Callable[[], Variant]] = {
            "raw": lambda: Variant("raw", "raw forward pass", "raw", None, raw_query(model)),
            **{f"inproc-{d}": partial(in_process_variant, model, data, d) for d in DEFENSES},
            **{f"ray-{d}": partial(ray_variant, victim, state, data, d) for d in DEFENSES},
            # what the persistent ledger costs: the same undefended service, ledger on disk
            "inproc-none-ledger_file": lambda: in_process_variant(
                model, data, "none", ledger_file("in-process.sqlite3")
            ),
            "ray-none-ledger_file": lambda: ray_variant(
                victim, state, data, "none", ledger_file("ray.sqlite3")
            ),
            "ray-floor": lambda: ray_floor_variant(victim, state, data),
            # an attack's query_all (batches grouped, two calls in flight); same on the bare actor
            "ray-none-pipelined": lambda: ray_variant(victim, state, data, "none", pipelined=True),
            "ray-none-ledger_file-pipelined": lambda: ray_variant(
                victim, state, data, "none", ledger_file("ray-p.sqlite3"), pipelined=True
            ),
            "ray-floor-pipelined": lambda: ray_floor_variant(victim, state, data, pipelined=True),
        }
        unknown = sorted(set(settings.only) - set(builders))
        if unknown:
            console.print(
                f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(builders)}"
            )
            return 2
        chosen = [k for k in builders if not settings.only or k == "raw" or k in settings.only]
        variants = [builders[key]() for key in chosen]
        checks = check_outputs(variants, data)
        total = settings.rounds * len(BATCH_SIZES) * len(variants) * settings.seconds
        console.log(
            f"measuring {len(variants)} variants × {len(BATCH_SIZES)} batch sizes × "
            f"{settings.rounds} rounds × {settings.seconds:g} s ≈ {total:.0f} s"
        )
        measure(variants, data, settings, console)
        ledger = ledgers(variants)
    finally:
        ray.shutdown()

    summary = summarise(variants)
    machine = machine_info(loadavg_start)
    result = {
        "benchmark": "serving",
        "date": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command,
        "settings": {
            "dataset": settings.dataset,
            "batch_sizes": list(BATCH_SIZES),
            "seconds_per_measurement": settings.seconds,
            "rounds": settings.rounds,
            "warmup_seconds": settings.warmup,
            "quick": settings.quick,
            "ray_init": {
                "num_cpus": RAY_CPUS,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES,
            },
            "ray_actor_num_cpus": 1,
            "statistic": "median over rounds of queries (images) per second",
        },
        "victim": {
            "spec": spec.model_dump(mode="json"),
            "key": spec.key(),
            "test_accuracy": victim.test_accuracy,
            "from_cache": victim.from_cache,
            "train_seconds": victim.train_seconds,
        },
        "machine": machine,
        "output_checks": checks,
        "ledgers": ledger,
        **summary,
    }
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(result, indent=2) + "\n")

    title = (
        f"Serving throughput, {spec.dataset}/{spec.arch} victim — median of {settings.rounds} "
        f"rounds × {settings.seconds:g} s, queries/s (×raw = vs raw forward at the same batch)"
    )
    console.print(rich_table(summary, title))
    if not all(entry["exact"] for entry in ledger.values()):
        console.print(f"[red]ledger mismatch[/red]: {ledger}")
    if settings.markdown:
        console.print(markdown_table(summary), markup=False, highlight=False, soft_wrap=True)
    console.log(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
