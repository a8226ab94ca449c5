"""Does a flood of malformed queries slow the victim service down? (RELIABILITY Q1's speed target.)

The Ray-hosted victim service of the Q1 test (digits MLP, reverse sigmoid) answers valid queries;
each round measures the median latency of ``--calls`` valid 4-image queries, then sends 10,000
malformed queries of every kind of :func:`arena.testing.malformed.malformed_queries` straight at
the actor (16 in flight), then measures the valid-query median again. The target is an after /
before ratio of at most 1.25. The ratio is a speed target, so it lives here, not in a test: on a
shared 2-core machine one round's ratio swings with whatever else runs (the test suite's copy of
this check failed at 1.39x in CI while the same flood measured 1.0x on a quiet machine).

Usage (from the repository root)::

    python benchmarks/malformed_flood.py [--rounds 5] [--calls 100] [--queries 10000]
                                         [--out benchmarks/results/malformed_flood.json]
    python benchmarks/malformed_flood.py --render benchmarks/results/malformed_flood.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import ray
import torch
from machine import git_commit, write_record
from rich.console import Console
from rich.table import Table

import agents  # noqa: F401
from arena.data import load_dataset
from arena.oracle import InputSpec, Oracle, Rejection
from arena.specs import PluginSpec, VictimSpec
from arena.testing.malformed import malformed_queries, valid_batch
from arena.victims import default_victim_cache, load_or_train
from orchestration.ray_service import RayServiceProxy, start_victim_service

REPO = Path(__file__).resolve().parents[1]
VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)
DEFENSE = PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2})
MAX_BATCH = 64
BATCH = 4
IN_FLIGHT = 16
TARGET = 1.25


def valid_latencies_ms(oracle: Oracle, calls: int) -> list[float]:
    """Milliseconds per valid ``BATCH``-image query, one Ray round trip each."""
    times = []
    for i in range(calls):
        x = torch.from_numpy(valid_batch(BATCH, (1, 8, 8))) * (i % 7 + 1) / 8
        start = time.perf_counter()
        oracle.query(x)
        times.append(1e3 * (time.perf_counter() - start))
    return times


def flood(service: object, queries: int, round_: int) -> float:
    """Send ``queries`` malformed queries to the actor, ``IN_FLIGHT`` at a time; seconds taken.
    Every one must come back as a rejection (never an answer)."""
    payloads = [case.make() for case in malformed_queries((1, 8, 8), MAX_BATCH)]
    pending: list[object] = []
    start = time.perf_counter()
    for i in range(queries):
        call = service.answer.remote("bench", f"bad-{round_}-{i}", payloads[i % len(payloads)])  # type: ignore[attr-defined]
        pending.append(call)
        if len(pending) >= IN_FLIGHT:
            ready, pending = ray.wait(pending, num_returns=IN_FLIGHT // 2)
            assert all(isinstance(r, Rejection) for r in ray.get(ready))
    assert all(isinstance(r, Rejection) for r in ray.get(pending))
    return time.perf_counter() - start


def render(path: Path) -> str:
    """The docs table of a written JSON (never retyped)."""
    record = json.loads(path.read_text())
    lines = [
        "| round | valid median before (ms) | after (ms) | after / before | ms per malformed |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['round']} | {r['before_ms']:.2f} | {r['after_ms']:.2f} | {r['ratio']:.2f}x "
            f"| {r['flood_ms_per_query']:.2f} |"
            for r in record["rounds"]
        ),
        "",
        f"Median ratio **{record['median_ratio']:.2f}x** (target <= {record['target']}x). "
        f"Measured {record['finished'][:16].replace('T', ' ')} UTC at commit {record['commit']}, "
        f"load average {record['machine']['loadavg_start'][0]:.1f} at the start.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/malformed_flood.json"
    )
    args = parser.parse_args()
    loadavg = os.getloadavg()
    data = load_dataset(VICTIM.dataset)
    victim = load_or_train(VICTIM, data, default_victim_cache())
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    rows = []
    try:
        service = start_victim_service(
            VICTIM,
            (DEFENSE,),
            ray.put(victim.model.state_dict()),
            InputSpec(shape=data.input_shape, max_batch=MAX_BATCH),
            data.num_classes,
        )
        proxy = RayServiceProxy(service)
        proxy.open_account("bench", 10**12)
        oracle = Oracle(proxy, "bench")
        valid_latencies_ms(oracle, 10)  # warm-up
        for round_ in range(args.rounds):
            before = statistics.median(valid_latencies_ms(oracle, args.calls))
            seconds = flood(service, args.queries, round_)
            after = statistics.median(valid_latencies_ms(oracle, args.calls))
            rows.append(
                {
                    "round": round_,
                    "before_ms": before,
                    "after_ms": after,
                    "ratio": after / before,
                    "flood_ms_per_query": 1e3 * seconds / args.queries,
                }
            )
    finally:
        ray.shutdown()
    ratios = [r["ratio"] for r in rows]
    table = Table(title=f"valid-query median latency around {args.queries:,} malformed queries")
    for column in ("round", "before ms", "after ms", "after/before", "ms per malformed"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["round"]),
            f"{r['before_ms']:.2f}",
            f"{r['after_ms']:.2f}",
            f"{r['ratio']:.2f}x",
            f"{r['flood_ms_per_query']:.2f}",
        )
    console = Console()
    console.print(table)
    median_ratio = statistics.median(ratios)
    console.print(f"median ratio {median_ratio:.2f}x (target <= {TARGET}x)")
    commit = git_commit()
    summary = {
        "commit": commit,
        "median_ratio": median_ratio,
        "target": TARGET,
        "met": median_ratio <= TARGET,
    }
    write_record(args.out, "malformed_flood", loadavg, {**summary, "rounds": rows})


if __name__ == "__main__":
    main()
