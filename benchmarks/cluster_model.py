"""A tournament on a cluster, on paper: what its wall time is made of, from measured parts.

No cluster or GPU is reachable here, so this models one from what is measured on this machine:

* the work of one match and of one victim of a CIFAR-scale config, in CPU-thread hours
  (``benchmarks/results/config_cost.json``, a lower bound: see ``config_cost.py``);
* the arena's own cost per match on Ray beyond that work, and the time to the first result
  (``benchmarks/results/tournament_scaling.json``: the 1-CPU Ray run against the serial sum);
* the driver's serial work per match, logging its record to MLflow, measured here on a SQLite
  store with the defense suite's records (``benchmarks/results/defense_suite.json``).

A match or a victim on a GPU is modelled as its CPU work divided by ``--speedup`` (how many
times faster one GPU trains and infers than one CPU thread here; not measured, so the table
shows several). One match per GPU, the matches in waves of ``nodes × gpus``; the driver logs a
match while the others run, so its logging binds only when it is longer than the matches.

Usage (from the repository root)::

    python benchmarks/cluster_model.py [--matches 1000] [--nodes 50] [--gpus 1]
                                       [--speedup 10 50 200]
    python benchmarks/cluster_model.py --render benchmarks/results/cluster_model.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import git_commit, machine_info

from arena.record import MatchResult
from orchestration.config import load_config
from orchestration.tracking import Tracker, default_tracking_uri

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def driver_log_seconds(rounds: int) -> list[float]:
    """Seconds the driver spends logging one match record to a fresh SQLite MLflow store."""
    suite = json.loads((RESULTS / "defense_suite.json").read_text())
    specs = {s.key(): s for s in load_config(REPO / suite["config"]).matches()}
    records = [MatchResult(**m) for m in suite["matches"] if m["match_key"] in specs]
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(default_tracking_uri(Path(tmp)), "cluster-model", Path(tmp) / "art")
        parent = tracker.open_parent("tournament", "cluster-model", {})
        for _ in range(rounds):
            for record in records:
                start = time.perf_counter()
                tracker.log_match(parent, specs[record.match_key], record)
                seconds.append(time.perf_counter() - start)
    return seconds


def model(
    cost: dict[str, Any], scaling: dict[str, Any], log_s: float, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per GPU speed-up: the wall time and its parts, in hours."""
    matches, slots = settings["matches"], settings["nodes"] * settings["gpus"]
    match_cpu_s = cost["match_cpu_hours"] * 3600 / cost["matches"]
    victim_cpu_s = cost["victim_cpu_hours"] * 3600 / cost["victims"]
    overhead_s = (scaling["ray_1cpu_wall_s"] - scaling["serial_sum_s"]) / scaling["matches"]
    start_s = scaling["ray_1cpu_init_s"] + scaling["ray_1cpu_results_done_at_s"][0]
    waves = math.ceil(matches / slots)
    rows = []
    for speedup in settings["speedups"]:
        compute_s = waves * (match_cpu_s / speedup + overhead_s)
        logging_s = matches * log_s
        parts = {
            "start": start_s,
            "victim": victim_cpu_s / speedup,
            "matches": max(compute_s, logging_s),
        }
        rows.append(
            {
                "speedup": speedup,
                "match_hours": match_cpu_s / speedup / 3600,
                "waves": waves,
                "start_hours": start_s / 3600,
                "victim_hours": parts["victim"] / 3600,
                "match_phase_hours": compute_s / 3600,
                "arena_overhead_hours": waves * overhead_s / 3600,
                "driver_logging_hours": logging_s / 3600,
                "wall_hours": sum(parts.values()) / 3600,
                "dominated_by": max(parts, key=lambda k: parts[k]),
            }
        )
    return rows


def render(path: Path) -> str:
    record = json.loads(path.read_text())
    s = record["settings"]
    lines = [
        f"{s['matches']:,} matches of `{record['config']}`'s kind on {s['nodes']} nodes × "
        f"{s['gpus']} GPU, one match per GPU ({record['rows'][0]['waves']} waves). Per match: "
        f"{record['match_cpu_hours']:.1f} CPU-thread hours of work (lower bound), "
        f"{record['overhead_s']:.2f} s of the arena's orchestration on Ray, "
        f"{record['log_s_median'] * 1e3:.0f} ms of driver logging (median; p90 "
        f"{record['log_s_p90'] * 1e3:.0f} ms).",
        "",
        "| GPU speed-up over one CPU thread (assumed) | one match (h) | victim (h) "
        "| match phase (h) | of it, arena overhead (h) | driver logging, overlapped (h) "
        "| wall (h) | dominated by |",
        "|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {row['speedup']:g}× | {row['match_hours']:.2f} | {row['victim_hours']:.2f} "
            f"| {row['match_phase_hours']:.2f} | {row['arena_overhead_hours']:.3f} "
            f"| {row['driver_logging_hours']:.3f} | {row['wall_hours']:.2f} "
            f"| {row['dominated_by']} |"
        )
    lines += [
        "",
        f"_Modelled {record['finished'][:16].replace('T', ' ')} UTC at commit {record['commit']} "
        f"from `config_cost.json` ({record['inputs']['config_cost']}), "
        f"`tournament_scaling.json` ({record['inputs']['tournament_scaling']}) and the driver "
        f"logging measured in this run._",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    parser.add_argument("--speedup", type=float, nargs="+", default=[10.0, 50.0, 200.0])
    parser.add_argument("--rounds", type=int, default=3, help="logging rounds over the records")
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster_model.json")
    parser.add_argument("--render", type=Path, help="print the docs table of a written JSON")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    loadavg_start = os.getloadavg()
    cost = json.loads((RESULTS / "config_cost.json").read_text())
    scaling = json.loads((RESULTS / "tournament_scaling.json").read_text())
    logs = sorted(driver_log_seconds(args.rounds))
    settings = {
        "matches": args.matches,
        "nodes": args.nodes,
        "gpus": args.gpus,
        "speedups": args.speedup,
    }
    log_s = statistics.median(logs)
    record = {
        "benchmark": "cluster_model",
        "finished": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
        "machine": machine_info(loadavg_start),
        "config": cost["config"],
        "inputs": {
            "config_cost": f"{cost['finished'][:10]}, commit {cost['commit']}",
            "tournament_scaling": scaling["finished"][:10],
        },
        "settings": settings,
        "match_cpu_hours": cost["match_cpu_hours"] / cost["matches"],
        "overhead_s": (scaling["ray_1cpu_wall_s"] - scaling["serial_sum_s"]) / scaling["matches"],
        "log_s_median": log_s,
        "log_s_p90": logs[int(0.9 * (len(logs) - 1))],
        "log_s": logs,
        "rows": model(cost, scaling, log_s, settings),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(render(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
