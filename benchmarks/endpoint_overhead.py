"""Per-call cost of the isolated HTTP endpoint, this tree's server against another revision's.

Three ways of answering the same batch of the same victim, each at batch 1 and 256:

* ``in-process``: :meth:`arena.service.VictimService.answer` in this process (no HTTP);
* ``http (this tree)``: the endpoint of the working tree (asyncio + h11), in a child process;
* ``http (REV)``: the endpoint of ``--baseline-rev`` (default: the last revision with the
  standard library's ``ThreadingHTTPServer``), exported with ``git archive`` and run in a child
  process from that tree.

Both servers serve an in-memory ledger (only the HTTP layer differs) and are queried by this
tree's client (:class:`arena.http_oracle.HttpEndpoint`: one keep-alive connection, a fresh query
id per call). Rounds are interleaved, the variant order rotating, so machine noise hits all
alike; the figure is the median call time over rounds of medians.

Usage (from the repository root)::

    python benchmarks/endpoint_overhead.py [--dataset fashion_mnist] [--rounds 5]
        [--seconds 2] [--baseline-rev 3c9f2be] [--out benchmarks/results/endpoint_overhead.json]
        [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import git_commit, write_record
from rich.console import Console
from rich.table import Table

from arena.data import load_dataset
from arena.http_oracle import HttpEndpoint
from arena.oracle import Answer
from arena.service_factory import build_service
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import default_victim_cache, load_or_train

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 256)
TOKEN = "benchmark-token-0123456789"
SERVER = """
import sys, torch
torch.set_num_threads(1)
from arena.data import load_dataset
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from orchestration.endpoint import IsolatedEndpoint, TokenTable
victim = VictimSpec.model_validate_json(sys.argv[1])
spec = MatchSpec(victim=victim, defenses=(), attack=PluginSpec(name="knockoff"), budget=1)
cache = __import__("pathlib").Path(sys.argv[2])
try:  # the service factory of this tree, or an older tree's referee
    from arena.service_factory import build_service
    service = build_service(victim, (), load_dataset(victim.dataset), cache)
except ImportError:
    from arena.referee import build_service
    service = build_service(spec, load_dataset(victim.dataset), cache)
endpoint = IsolatedEndpoint(service, TokenTable({sys.argv[3]: "b"}, {"b": 10**12}))
print(endpoint.url, flush=True)
endpoint.serve_forever()
"""
"""a child's server: the victim from the cache behind no defense, an in-memory ledger"""


def start_server(tree: Path, victim: VictimSpec, cache: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SERVER, victim.model_dump_json(), str(cache), TOKEN]
    child = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not found:
        child.kill()
        raise SystemExit(f"the server of {tree} did not start: {line!r}")
    return child, found.group(0)


def export_revision(rev: str, into: Path) -> Path:
    """The files of ``rev`` (``git archive``) in a fresh folder."""
    archive = into / "tree.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def time_calls(call: Callable[[str], Any], seconds: float) -> float:
    """Median seconds per call over ``seconds`` of back-to-back calls."""
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        call(f"c{time.perf_counter_ns()}")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--baseline-rev", default="3c9f2be")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/endpoint_overhead.json"
    )
    parser.add_argument("--quick", action="store_true", help="digits, 2 rounds of 0.3 s")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.rounds, args.seconds = "digits", 2, 0.3
    loadavg = os.getloadavg()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    victim = VictimSpec(dataset=args.dataset, arch="lenet5" if args.dataset != "digits" else "mlp")
    cache = default_victim_cache()
    load_or_train(victim, data, cache)  # trained once, then every server loads it
    spec = MatchSpec(victim=victim, defenses=(), attack=PluginSpec(name="knockoff"), budget=1)
    service = build_service(spec.victim, spec.defenses, data, cache)
    service.open_account("b", 10**12)
    pool = data.test.x[:256].numpy()
    commit = git_commit()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = export_revision(args.baseline_rev, Path(scratch))
        children = {}
        clients: dict[str, Callable[[str, str, np.ndarray], Any]] = {"in-process": service.answer}
        for label, tree in ((f"http ({commit})", REPO), (f"http ({args.baseline_rev})", baseline)):
            children[label], url = start_server(tree, victim, cache)
            clients[label] = HttpEndpoint(url, TOKEN).answer
        samples: dict[tuple[str, int], list[float]] = {}
        labels = list(clients)
        try:
            for round_ in range(args.rounds):
                order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
                for label in order:
                    for batch in BATCHES:
                        x = pool[:batch]
                        answer = clients[label]

                        def call(query_id: str, answer: Any = answer, x: np.ndarray = x) -> None:
                            result = answer("b", query_id, x)
                            assert isinstance(result, Answer), result

                        samples.setdefault((label, batch), []).append(
                            time_calls(call, args.seconds)
                        )
        finally:
            for child in children.values():
                child.kill()
    rows = []
    for (label, batch), values in samples.items():
        ms = 1e3 * statistics.median(values)
        base = 1e3 * statistics.median(samples[("in-process", batch)])
        rows.append({"variant": label, "batch": batch, "ms_per_call": ms, "overhead_ms": ms - base})
    table = Table(title=f"endpoint per-call cost, {args.dataset}, {args.rounds} rounds")
    for column in ("variant", "batch", "ms per call", "over in-process (ms)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["variant"], str(row["batch"]), f"{row['ms_per_call']:.3f}",
            f"{row['overhead_ms']:.3f}",
        )  # fmt: skip
    Console().print(table)
    fields = {"dataset": args.dataset, "commit": commit, "baseline_rev": args.baseline_rev}
    write_record(args.out, "endpoint_overhead", loadavg, {**fields, "rows": rows})
    if args.markdown:
        print(f"\nMeasured {time.strftime('%Y-%m-%d')} at {commit} (`{' '.join(sys.argv)}`):\n")
        print("| variant | batch | ms per call | over in-process (ms) |\n|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['variant']} | {row['batch']} | {row['ms_per_call']:.3f} "
                f"| {row['overhead_ms']:.3f} |"
            )


if __name__ == "__main__":
    main()
