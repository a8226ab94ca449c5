"""Tournament scaling: the same tournament on a local Ray with 1 CPU, with 2 CPUs, and its matches
played one after another in one process with ``referee_match``, all in one run.

* parallel speed-up = wall(Ray, 1 CPU) / wall(Ray, 2 CPUs): what a second core buys;
* orchestration overhead = wall(Ray, 1 CPU) / sum of the serial matches: what Ray (task and
  actor start, object transfer, actor calls) and the driver's MLflow logging cost on top of the
  matches themselves.

The victim is trained (or loaded) into ``$ARENA_HOME/victims`` before any timing starts, and each
Ray run gets a fresh MLflow SQLite store, so both play every match. The match records of the three
runs are compared field by field (timings excluded): the scheduling must not change a result (R2).
The Ray start (``ray.init``) is timed separately from the tournament. Usage (from the repository
root)::

    python benchmarks/tournament_scaling.py [--config configs/fashion_mnist.yaml] \
        [--budgets 1000 5000] [--defenses N] [--out benchmarks/results/tournament_scaling.json]
    python benchmarks/tournament_scaling.py --render benchmarks/results/tournament_scaling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from machine import write_record
from rich.console import Console
from rich.table import Table

import agents  # noqa: F401  (registers the attacks)
from arena.data import load_dataset
from arena.home import ArenaHome
from arena.match_data import MatchData
from arena.record import MatchResult, comparable
from arena.referee import referee_match
from arena.service_factory import build_service
from arena.specs import MatchSpec
from arena.victims import load_or_train
from orchestration.config import TournamentConfig, load_config
from orchestration.tournament import run_tournament
from orchestration.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]


def serial(config: TournamentConfig, cache_dir: Path, console: Console) -> dict[str, Any]:
    """Every match in this process, one after another, one torch thread (like a match task)."""
    torch.set_num_threads(config.ray.cpus_per_match)
    specs = config.matches()
    data = {name: load_dataset(name) for name in {s.victim.dataset for s in specs}}
    services: dict[str, Any] = {}
    build_s = 0.0
    seconds: dict[str, float] = {}
    results: dict[str, MatchResult] = {}
    for spec in specs:
        key = spec.victim.key() + "|" + "|".join(d.model_dump_json() for d in spec.defenses)
        if key not in services:
            start = time.perf_counter()
            services[key] = build_service(
                spec.victim, spec.defenses, data[spec.victim.dataset], cache_dir
            )
            build_s += time.perf_counter() - start
        start = time.perf_counter()
        match_data = MatchData.from_splits(data[spec.victim.dataset], spec.pool)
        results[spec.key()] = referee_match(spec, services[key], match_data)
        seconds[spec.key()] = time.perf_counter() - start
        console.print(f"  serial {_label(spec)}: {seconds[spec.key()]:.1f} s")
    return {
        "results": results,
        "match_seconds": seconds,
        "sum_s": sum(seconds.values()),
        "service_build_s": build_s,
    }


def on_ray(
    config: TournamentConfig, cpus: int, home: Path, cache_dir: Path, console: Console
) -> dict[str, Any]:
    """The tournament on a fresh local Ray with ``cpus`` CPUs and a fresh MLflow store."""
    start = time.perf_counter()
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.ERROR,
        object_store_memory=512 * 1024 * 1024,
    )
    init_s = time.perf_counter() - start
    try:
        store = home / f"scaling-{cpus}cpu-{time.time_ns()}"
        tracker = Tracker(
            f"sqlite:///{store}.db", config.tracking.experiment, artifact_root=store / "artifacts"
        )
        done_at: list[float] = []
        started_at: list[float] = []
        """when the first match to finish began playing: what came before is start-up"""

        def finished(spec: MatchSpec, result: object) -> None:
            done_at.append(time.perf_counter() - start)
            if isinstance(result, MatchResult) and not started_at:
                started_at.append(done_at[-1] - result.match_seconds)
            console.print(f"  {cpus} CPU {_label(spec)}: done at {done_at[-1]:.1f} s")

        start = time.perf_counter()
        outcome = run_tournament(
            config, tracker, ArenaHome.at(cache_dir.parent, victims=cache_dir), on_result=finished
        )
        wall_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    if outcome.failures:
        raise RuntimeError(f"{len(outcome.failures)} matches failed: {outcome.failures[0].reason}")
    return {
        "results": {r.match_key: r for r in outcome.results},
        "ray_init_s": init_s,
        "wall_s": wall_s,
        "match_seconds": {r.match_key: r.match_seconds for r in outcome.results},
        "results_done_at_s": done_at,
        "first_match_started_at_s": started_at[0] if started_at else None,
    }


def _label(spec: MatchSpec) -> str:
    defense = "+".join(d.name for d in spec.defenses) or "none"
    return f"{defense} / {spec.attack.name} / {spec.budget}"


def render(record: dict[str, Any]) -> str:
    """The docs table of a written JSON, stamped with its date, commit and command."""
    serial = record["serial_sum_s"]
    sums = {cpus: sum(m[f"ray_{cpus}cpu_match_s"] for m in record["per_match"]) for cpus in (1, 2)}
    lines = [
        "| run | wall s | sum of match s | vs serial sum |",
        "| :--- | ---: | ---: | ---: |",
        f"| serial, one process | {serial:.1f} (the sum) | {serial:.1f} | 1.00× |",
    ]
    for cpus in (1, 2):
        wall = record[f"ray_{cpus}cpu_wall_s"]
        init = record[f"ray_{cpus}cpu_init_s"]
        lines.append(
            f"| local Ray, `num_cpus={cpus}` (`ray.init` {init:.1f} s, not included) | "
            f"{wall:.1f} | {sums[cpus]:.1f} | {wall / serial:.2f}× |"
        )
    first = [record[f"ray_{cpus}cpu_results_done_at_s"][0] for cpus in (1, 2)]
    began = [record.get(f"ray_{cpus}cpu_first_match_started_at_s") for cpus in (1, 2)]
    start_up = (
        f" (start-up before it began playing: {began[0]:.1f} s and {began[1]:.1f} s)"
        if None not in began
        else ""
    )
    load = record["machine"]["loadavg_start"][0]
    return "\n".join(lines) + (
        f"\n\n* Parallel speed-up (1-CPU wall / 2-CPU wall): **{record['parallel_speedup']:.2f}×**;"
        f" orchestration overhead (1-CPU Ray wall / serial sum): "
        f"**{record['orchestration_overhead']:.2f}×**; first match result after {first[0]:.1f} s"
        f" (1 CPU) and {first[1]:.1f} s (2 CPUs){start_up}; match records identical in all "
        "three runs: "
        f"{'yes' if record['records_identical'] else 'no'}.\n\n"
        f"_Measured {record['finished'][:16].replace('T', ' ')} UTC at commit "
        f"{record.get('commit', 'unknown')}, {record['matches']} matches at budgets "
        f"{record['budgets']}, load average {load:.1f} at the start._\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fashion_mnist.yaml")
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=None, help="replace the config's budgets"
    )
    parser.add_argument(
        "--defenses", type=int, default=None, help="keep only the config's first N defense chains"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "tournament_scaling.json"
    )
    parser.add_argument("--render", type=Path, help="print the docs table of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    loadavg = os.getloadavg()
    console = Console(width=140)
    config = load_config(args.config)
    if args.budgets:
        config = config.model_copy(update={"budgets": args.budgets})
    if args.defenses:
        config = config.model_copy(update={"defenses": config.defenses[: args.defenses]})
    specs = config.matches()
    home = ArenaHome.from_environment().root
    cache_dir = home / "victims"
    console.print(f"{config.name}: {len(specs)} matches, budgets {config.budgets}, home {home}")
    for victim in {s.victim.key(): s.victim for s in specs}.values():
        start = time.perf_counter()
        trained = load_or_train(victim, load_dataset(victim.dataset), cache_dir)
        how = "cached" if trained.from_cache else "trained"
        console.print(
            f"victim {victim.key()}: accuracy {trained.test_accuracy:.4f}, "
            f"{how} in {time.perf_counter() - start:.0f} s"
        )

    with tempfile.TemporaryDirectory(prefix="arena-scaling-") as tmp:
        one = serial(config, cache_dir, console)
        ray1 = on_ray(config, 1, Path(tmp), cache_dir, console)
        ray2 = on_ray(config, 2, Path(tmp), cache_dir, console)

    keys = [s.key() for s in specs]
    mismatched = [
        k
        for k in keys
        if not (
            comparable(one["results"][k])
            == comparable(ray1["results"][k])
            == comparable(ray2["results"][k])
        )
    ]
    speedup = ray1["wall_s"] / ray2["wall_s"]
    overhead = ray1["wall_s"] / one["sum_s"]

    table = Table(title=f"{config.name}, {len(specs)} matches: wall time on {os.cpu_count()} CPUs")
    for column in ("run", "wall s", "ray.init s", "vs serial sum"):
        table.add_column(column, justify="right")
    table.add_row("serial, one process (sum of matches)", f"{one['sum_s']:.1f}", "-", "1.00x")
    table.add_row(
        "Ray, num_cpus=1", f"{ray1['wall_s']:.1f}", f"{ray1['ray_init_s']:.1f}", f"{overhead:.2f}x"
    )
    table.add_row(
        "Ray, num_cpus=2",
        f"{ray2['wall_s']:.1f}",
        f"{ray2['ray_init_s']:.1f}",
        f"{ray2['wall_s'] / one['sum_s']:.2f}x",
    )
    console.print(table)
    console.print(
        f"parallel speed-up (1 CPU / 2 CPUs): {speedup:.2f}x; orchestration overhead "
        f"(1-CPU Ray wall / serial sum): {overhead:.2f}x; serial service builds "
        f"{one['service_build_s']:.1f} s (not in the sum); first match result after "
        f"{ray1['results_done_at_s'][0]:.1f} s (1 CPU) and {ray2['results_done_at_s'][0]:.1f} s "
        "(2 CPUs)"
    )
    console.print(
        f"match records identical in all three runs (timings excluded): {not mismatched}"
        + (f" — differ: {mismatched}" if mismatched else "")
    )
    write_record(
        args.out,
        "tournament_scaling",
        loadavg,
        {
            "config": str(args.config),
            "budgets": config.budgets,
            "matches": len(specs),
            "serial_sum_s": one["sum_s"],
            "serial_service_build_s": one["service_build_s"],
            "ray_1cpu_wall_s": ray1["wall_s"],
            "ray_2cpu_wall_s": ray2["wall_s"],
            "ray_1cpu_init_s": ray1["ray_init_s"],
            "ray_2cpu_init_s": ray2["ray_init_s"],
            "ray_1cpu_results_done_at_s": ray1["results_done_at_s"],
            "ray_2cpu_results_done_at_s": ray2["results_done_at_s"],
            "ray_1cpu_first_match_started_at_s": ray1["first_match_started_at_s"],
            "ray_2cpu_first_match_started_at_s": ray2["first_match_started_at_s"],
            "parallel_speedup": speedup,
            "orchestration_overhead": overhead,
            "records_identical": not mismatched,
            "records_differing": mismatched,
            "per_match": [
                {
                    "match_key": k,
                    "label": _label(s),
                    "serial_s": one["match_seconds"][k],
                    "ray_1cpu_match_s": ray1["match_seconds"][k],
                    "ray_2cpu_match_s": ray2["match_seconds"][k],
                    "stolen_accuracy": one["results"][k].stolen_accuracy,
                    "fidelity": one["results"][k].fidelity,
                }
                for k, s in zip(keys, specs, strict=True)
            ],
        },
    )
    return 0 if not mismatched else 1


if __name__ == "__main__":
    sys.exit(main())
