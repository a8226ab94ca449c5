"""F3: a victim-service actor survives losing the worker node it runs on, on a real multi-node
Ray cluster on this machine: a head and two worker raylets started with ``ray start --block``,
each in a process group this test owns (losing a node = SIGKILL to its process group).

The cluster is driven from a subprocess, this file run as a script: the pytest process already
holds the session's Ray, and one process joins one cluster only. The head runs the match tasks
(1 CPU); the workers have no CPU, only a ``victim_host`` slot, so the victim can live on a worker
and nowhere else, and losing its node never takes the match with it.

Teardown never uses ``ray stop`` (it kills every Ray process on the machine, other sessions'
included): it kills this cluster's process groups, then any process that names the cluster's
temporary directory, and checks that none is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")
WORKERS = ("node_a", "node_b")
VICTIM_SLOT = "victim_host"
"""custom resource each worker node offers once: where a victim-service actor may run"""
REPLACE_WITHIN_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalCluster:
    """A head and worker raylets on this machine, each ``ray start --block`` in its own session.

    Every port is picked free (two agents on one machine would collide on Ray's fixed defaults),
    and the cluster uses token authentication with a token made for it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = ""
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(REPO),
        }

    def start(self, workers: Sequence[str], timeout_s: float = 90.0) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        head = [
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={self.root}",
            f"--ray-client-server-port={free_port()}",
        ]
        self._launch("head", head)
        self._wait_for_log("head", "Ray runtime started", timeout_s)
        for name in workers:
            resources = json.dumps({name: 1, VICTIM_SLOT: 1})
            self._launch(
                name, [f"--address={self.address}", "--num-cpus=0", f"--resources={resources}"]
            )
            # one at a time: raylets starting together on one machine race for the same socket
            # and log names, and one of them never registers
            self._wait_for_log(name, "Ray runtime started", timeout_s)

    def _launch(self, name: str, args: list[str]) -> None:
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        command = [
            str(RAY_CLI),
            "start",
            *args,
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--object-store-memory={100 * 1024 * 1024}",
            "--block",
            *ports,
        ]
        with (self.root / f"{name}.log").open("wb") as log:
            self.nodes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def _wait_for_log(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        log = self.root / f"{name}.log"
        while text not in log.read_text(errors="replace"):
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-chars:]

    def process_groups(self) -> dict[str, int]:
        """Node name -> process group (the ``ray start`` process leads its own session)."""
        return {name: proc.pid for name, proc in self.nodes.items()}

    def stop(self) -> None:
        """SIGKILL every node's process group, then every straggler naming the temp dir."""
        for proc in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def leftovers(self) -> list[int]:
        """Live processes of this cluster: in one of its process groups or naming its temp dir."""
        groups = set(self.process_groups().values())
        marker = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                group = os.getpgid(pid)
            except (OSError, IndexError):
                continue
            if state != "Z" and (group in groups or marker in cmdline):
                found.append(pid)
        return found


@contextlib.contextmanager
def local_cluster(workers: Sequence[str]) -> Iterator[LocalCluster]:
    """A started cluster, always torn down (short temp path: Ray's unix sockets live in it)."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="arena-f3-", dir="/tmp")))
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()
        if not cluster.leftovers():
            shutil.rmtree(cluster.root, ignore_errors=True)


PLUGIN = """
from dataclasses import dataclass

from arena.defenses import DEFENSES
from arena.defenses.reverse_sigmoid import ReverseSigmoid


@DEFENSES.register("f3_reverse_sigmoid")
@dataclass(frozen=True)
class F3ReverseSigmoid(ReverseSigmoid):
    \"\"\"Reverse sigmoid, from a plug-in file the worker nodes never saw.\"\"\"
"""


def f3_config(raw: dict[str, Any], plugin: Path) -> dict[str, Any]:
    """The digits smoke tournament cut to one match that asks 400 single-image queries, so the
    victim is still mid-match when its node is killed. Its defense comes from a plug-in file
    named in ``plugins:``: the victim actor on a worker node must load it from the driver."""
    plugin.write_text(PLUGIN)
    raw["name"] = "digits-f3"
    raw["plugins"] = [str(plugin)]
    raw["victims"][0]["epochs"] = 10
    raw["defenses"] = [{"name": "f3_reverse_sigmoid", "params": {"beta": 1.0, "gamma": 0.1}}]
    raw["attacks"] = [{"name": "knockoff", "params": {"epochs": 3, "query_batch": 1}}]
    raw["budgets"] = [400]
    raw["ray"] = {"cpus_per_match": 1, "cpus_per_victim": 0}
    return raw


@pytest.mark.slow
def test_F3_victim_survives_losing_its_worker_node(
    tmp_path: Path, smoke_config_dict: dict[str, Any]
) -> None:
    config = f3_config(smoke_config_dict, tmp_path / "f3_plugin.py")
    out = tmp_path / "f3.json"
    with local_cluster(WORKERS) as cluster:
        groups = cluster.process_groups()
        command = [
            sys.executable,
            __file__,
            "--address",
            cluster.address,
            "--home",
            str(tmp_path / "home"),
            "--config",
            json.dumps(config),
            "--groups",
            json.dumps({name: groups[name] for name in WORKERS}),
            "--out",
            str(out),
        ]
        env = {**cluster.env, "ARENA_HOME": str(tmp_path / "home")}
        driver = subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=420
        )
        logs = {name: cluster.log_tail(name, 1500) for name in cluster.nodes}
        assert driver.returncode == 0, f"{driver.stdout[-3000:]}\n{driver.stderr[-6000:]}\n{logs}"
    assert cluster.leftovers() == []
    report = json.loads(out.read_text())
    print(
        f"\nF3: victim on {report['victim_node']} killed after {report['used_at_kill']} of 400 "
        f"queries; re-placed on {report['new_node']} and answering after "
        f"{report['replaced_s']} s (node declared dead after {report['node_dead_s']} s); "
        f"ledger after restart {report['used_after_restart']}"
    )
    assert report["victim_node"] in WORKERS
    assert 0 < report["used_at_kill"] < 400, "the kill must land mid-match"
    assert report["error"] is None, report["error"]
    assert report["new_node"] in WORKERS and report["new_node"] != report["victim_node"]
    assert report["replaced_s"] <= REPLACE_WITHIN_S
    assert report["used_after_restart"] >= report["used_at_kill"], "the ledger was not restored"
    assert report["failures"] == []
    assert report["fault"] == report["nofault"]
    assert len(report["fault"]) == 1 and report["fault"][0]["queries_used"] == 400


# --- the driver: run as a script inside the cluster ------------------------------------------


def _node_of(service: Any) -> str:
    """Runs inside the victim actor (through ``__ray_call__``): the node it lives on."""
    import ray

    node: str = ray.get_runtime_context().get_node_id()
    return node


def _drive(args: argparse.Namespace) -> dict[str, Any]:
    """Play the match without a fault, then again killing the victim's node mid-match."""
    import ray

    from arena.home import ArenaHome
    from arena.identities import attacker_id
    from arena.record import MatchResult, comparable
    from orchestration import runtime, tournament
    from orchestration.config import parse_config
    from orchestration.ray_service import start_victim_service
    from orchestration.tracking import Tracker

    ray.init(address=args.address, logging_level=logging.ERROR)
    groups: dict[str, int] = json.loads(args.groups)
    deadline = time.monotonic() + 60
    while sum(n["Alive"] for n in ray.nodes()) < len(groups) + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster never had all its nodes: {ray.nodes()}")
        time.sleep(0.5)
    names = {
        n["NodeID"]: next((g for g in groups if g in n["Resources"]), "head")
        for n in ray.nodes()
        if n["Alive"]
    }

    started: list[Any] = []

    def placed_service(*a: Any, **kw: Any) -> Any:
        """Victim services need a worker's victim slot (start_victim_service's Ray options)."""
        handle = start_victim_service(*a, **kw, resources={VICTIM_SLOT: 1})
        started.append(handle)
        return handle

    runtime.start_victim_service = placed_service  # type: ignore[attr-defined]
    config = parse_config(json.loads(args.config))
    (spec,) = config.matches()
    home = Path(args.home)

    def play(store: str) -> tournament.TournamentOutcome:
        tracker = Tracker(
            f"sqlite:///{home / store}.db", store, artifact_root=home / f"{store}-artifacts"
        )
        return tournament.run_tournament(config, tracker, ArenaHome.at(home))

    def record(results: list[MatchResult]) -> list[dict[str, Any]]:
        return [comparable(r, mode="json") for r in results]

    calm = play("nofault")
    report: dict[str, Any] = {"nofault": record(calm.results), "error": None}
    report["nofault_failures"] = [f.reason for f in calm.failures]

    faulty: dict[str, Any] = {}

    def fault_run() -> None:
        try:
            faulty["outcome"] = play("fault")
        except BaseException as exc:
            faulty["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=fault_run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(started) < 2 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(started) < 2:
        raise RuntimeError(f"the faulty run started no victim service: {faulty}")
    handle = started[1]
    attacker = attacker_id(spec)
    used = 0
    while used < 20 and time.monotonic() < deadline:  # the attacker is under way
        with contextlib.suppress(ray.exceptions.RayTaskError):
            used = ray.get(handle.account_stats.remote(attacker), timeout=30).used
        time.sleep(0.01)
    victim_node = ray.get(handle.__ray_call__.remote(_node_of), timeout=30)
    report["victim_node"] = names.get(victim_node, victim_node)
    used = ray.get(handle.account_stats.remote(attacker), timeout=30).used
    killed_at = time.monotonic()
    os.killpg(groups[report["victim_node"]], signal.SIGKILL)
    report["used_at_kill"] = used
    report["node_dead_s"] = None

    def watch_node() -> None:
        """When the cluster declares the killed node dead (Ray's health checks)."""
        while time.monotonic() - killed_at < 120:
            alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            if not alive.get(victim_node, False):
                report["node_dead_s"] = round(time.monotonic() - killed_at, 2)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_node, daemon=True)
    watcher.start()

    new_node = None
    while time.monotonic() - killed_at < 120:
        try:
            new_node = ray.get(handle.__ray_call__.remote(_node_of), timeout=5)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            continue
        except ray.exceptions.RayActorError as exc:
            report["error"] = f"the victim did not come back: {type(exc).__name__}: {exc}"[:2000]
            break
        if new_node != victim_node:
            break
        time.sleep(0.05)
    report["replaced_s"] = round(time.monotonic() - killed_at, 2)
    watcher.join(timeout=5)
    report["new_node"] = names.get(new_node, new_node) if new_node else None
    report["used_after_restart"] = None
    if report["error"] is None:
        stats = ray.get(handle.account_stats.remote(attacker), timeout=60)
        report["used_after_restart"] = stats.used
    thread.join(timeout=300)
    if "outcome" in faulty:
        report["fault"] = record(faulty["outcome"].results)
        report["failures"] = [f.reason[:2000] for f in faulty["outcome"].failures]
    else:
        report["fault"] = []
        report["failures"] = [faulty.get("error", "the faulty run did not finish in 300 s")]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="F3 driver: run inside a multi-node cluster")
    for flag in ("--address", "--home", "--config", "--groups", "--out"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    report = _drive(args)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
