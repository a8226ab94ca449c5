"""Operator faults: what a SIGKILLed driver left of its local Ray is stopped by the next start,
and nothing else is. Drivers and their Rays are real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from orchestration.ray_leftovers import (
    RECORDS,
    DriverRecord,
    clean_dead_drivers,
    session_processes,
)

REPO = Path(__file__).resolve().parents[2]

# a driver that starts a small local Ray and records it as start_ray does, runs one task (so a
# worker exists), prints its record's path, then runs a task for each line on its stdin until
# that closes
DRIVER = r"""
import logging, os, sys
from pathlib import Path

import ray

from orchestration.ray_leftovers import record_local_ray

ray.init(
    num_cpus=1,
    include_dashboard=False,
    object_store_memory=100 * 1024 * 1024,
    logging_level=logging.ERROR,
)
record = record_local_ray(Path(sys.argv[1]))


@ray.remote
def pid():
    return os.getpid()


ray.get(pid.remote())
print(record, flush=True)
for _ in sys.stdin:
    print(ray.get(pid.remote()), flush=True)
"""


def _driver(home: Path) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(home)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _record(proc: subprocess.Popen[str]) -> Path:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line not in ("", "None"), proc.communicate()[1][-3000:]
    return Path(line)


def _tree(pid: int) -> list[Any]:
    """Every process the driver started, directly or through its raylet."""
    return list(psutil.Process(pid).children(recursive=True))


def _running(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_leftovers_of_a_killed_driver_are_cleaned_on_next_start(tmp_path: Path) -> None:
    """Two drivers of one home each start a local Ray; one is SIGKILLed. The cleanup finds
    exactly its session's processes (its agents would otherwise live on for about a minute),
    stops them within seconds, drops its record, and leaves the live driver's Ray running."""
    home = tmp_path / "home"
    doomed, survivor = _driver(home), _driver(home)
    try:
        doomed_path, survivor_path = _record(doomed), _record(survivor)
        assert doomed_path.parent == survivor_path.parent == home / RECORDS
        record = DriverRecord(**json.loads(doomed_path.read_text()))

        # the session's processes are exactly what the driver started (Ray settles first)
        deadline = time.monotonic() + 20
        while True:
            tree = _tree(doomed.pid)
            found = session_processes(record.session_dir, record.since)
            if {p.pid for p in found} == {p.pid for p in tree} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert {p.pid for p in found} == {p.pid for p in tree}
        names = {p.name() for p in tree}
        assert {"raylet", "gcs_server"} <= names and any(n.startswith("ray::") for n in names)
        # the survivor's Ray minus its workers (Ray itself ends idle workers beyond num_cpus)
        live = [p for p in _tree(survivor.pid) if p.name() != "ray::IDLE"]

        doomed.kill()
        doomed.wait(timeout=30)
        started = time.monotonic()
        (cleaned,) = clean_dead_drivers(home)
        took = time.monotonic() - started
        print(f"cleaned {len(cleaned.pids)} process(es), {cleaned.rss_mb:.0f} MB in {took:.1f} s")

        assert cleaned.session_dir == record.session_dir and cleaned.driver == record.driver
        assert set(cleaned.pids) <= {p.pid for p in tree}
        left = [p for p in tree if _running(p)]
        assert not left, [(p.pid, p.name()) for p in left]
        assert took < 15
        assert not doomed_path.exists() and survivor_path.exists()
        assert clean_dead_drivers(home) == []  # nothing left, and the live driver kept
        assert all(_running(p) for p in live)
        assert survivor.stdin is not None and survivor.stdout is not None
        survivor.stdin.write("one more task\n")
        survivor.stdin.flush()
        assert survivor.stdout.readline().strip().isdigit()  # its Ray still plays
    finally:
        for proc in (doomed, survivor):
            if proc.poll() is None:
                proc.communicate(timeout=60)  # closes stdin: the driver shuts its Ray down
