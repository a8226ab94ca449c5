"""What a SIGKILLed driver leaves of the local Ray it started, stopped by the next driver.

``ray.init()`` without an address starts a Ray node owned by the driver. On SIGKILL its direct
children (gcs_server, raylet, the monitors, the dashboard head) die with it (Ray starts them with
a parent-death signal), the workers follow within about 4 s, but the dashboard agent and the
runtime-env agent first report the raylet's death to the GCS that died too and wait out that
call: they outlived a killed driver by about 60 s here (~230 MB). ``ray stop`` would end them,
and every other Ray on the machine with them (it matches process names, not sessions).

So a driver that starts a local Ray records itself under ``$ARENA_HOME/ray-drivers/``; the next
driver about to start one stops the processes of each recorded session whose driver is gone.
Sessions of live drivers, sessions no driver of this home recorded and clusters reached by
address are never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from arena.home import ArenaHome
from orchestration.tracking import driver_alive, driver_identity

log = logging.getLogger(__name__)

RECORDS = "ray-drivers"
"""folder under the arena home: one ``<driver pid>.json`` per driver that started a local Ray"""
GRACE_S = 3.0
"""how long leftovers get to end after SIGTERM before SIGKILL (the agents, stuck in a call to the
dead GCS, do not act on SIGTERM)"""
_RAY_BINARIES = ("raylet", "gcs_server")


@dataclass(frozen=True)
class DriverRecord:
    """A driver that started a local Ray: who, which session, and since when (epoch seconds,
    so a process started earlier is never taken for one of the session's)."""

    driver: str
    session_dir: str
    since: float


@dataclass(frozen=True)
class CleanedSession:
    """Processes of a dead driver's session that were stopped."""

    driver: str
    session_dir: str
    pids: tuple[int, ...]
    rss_mb: float


def record_local_ray(home: Path) -> Path | None:
    """Record this driver and the local Ray it has just started. None when it started none
    (``ray.init`` joined a cluster named by ``RAY_ADDRESS`` or started by ``ray start``)."""
    me = psutil.Process()
    session = None
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "raylet":
                session = _option(child.cmdline(), "--session_dir=")
    if session is None:
        return None
    record = DriverRecord(driver_identity(), session, me.create_time())
    path = home / RECORDS / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record)))
    temporary.replace(path)  # a reader never sees half a record
    return path


def clean_dead_drivers(home: Path, grace_s: float = GRACE_S) -> list[CleanedSession]:
    """Stop what dead drivers left of the local Rays they recorded under ``home``, log one line
    per session cleaned, and drop the records of dead drivers."""
    cleaned = []
    for path in sorted((home / RECORDS).glob("*.json")):
        record = _read(path)
        if record is None:
            path.unlink(missing_ok=True)  # unreadable: nothing to go by
            continue
        if driver_alive(record.driver) is not False:
            continue  # alive, or on another host sharing this home
        if procs := session_processes(record.session_dir, record.since):
            rss = sum(_rss(p) for p in procs) / 2**20
            _stop(procs, grace_s)
            pids = tuple(p.pid for p in procs)
            cleaned.append(CleanedSession(record.driver, record.session_dir, pids, rss))
            log.warning(
                "stopped %d Ray process(es) (%.0f MB) left by killed driver %s (session %s)",
                len(pids),
                rss,
                record.driver,
                record.session_dir,
            )
        path.unlink(missing_ok=True)
    return cleaned


def session_processes(session_dir: str, since: float) -> list[Any]:
    """This machine's Ray processes of one session: started no earlier than its driver, and
    naming the session directory in their command line or holding a file under it open (workers
    and agents retitle themselves ``ray::…`` but keep their log files there open)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
        info = proc.info
        cmdline = info["cmdline"] or []
        if proc.pid == os.getpid() or (info["create_time"] or 0) < since:
            continue
        if not _is_ray(info["name"] or "", cmdline):
            continue
        try:
            paths = cmdline + [f.path for f in proc.open_files()]
        except psutil.Error:
            continue  # gone, or another user's
        if any(_names(text, session_dir) for text in paths):
            found.append(proc)
    return found


def _is_ray(name: str, cmdline: list[str]) -> bool:
    """A Ray binary, a process Ray retitled, or Python running a script of the ray package."""
    if name in _RAY_BINARIES or name.startswith("ray::"):
        return True
    if cmdline and cmdline[0].startswith("ray::"):
        return True
    return any("/ray/" in arg and arg.endswith(".py") for arg in cmdline[1:3])


def _names(text: str, session_dir: str) -> bool:
    return text == session_dir or text.endswith("=" + session_dir) or session_dir + "/" in text


def _option(cmdline: list[str], prefix: str) -> str | None:
    return next((arg.removeprefix(prefix) for arg in cmdline if arg.startswith(prefix)), None)


def _read(path: Path) -> DriverRecord | None:
    try:
        return DriverRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _rss(proc: Any) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _stop(procs: list[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL to whatever is still running after ``grace_s``."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def main(argv: list[str] | None = None) -> None:
    """By hand, without starting a run: ``python -m orchestration.ray_leftovers [HOME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestration.ray_leftovers",
        description="Stop what killed drivers of an arena home left of their local Rays.",
    )
    parser.add_argument("home", nargs="?", type=Path, help="default: ARENA_HOME or ./.arena")
    home = parser.parse_args(argv).home or ArenaHome.from_environment().root
    logging.basicConfig(format="%(message)s")
    print(f"{len(clean_dead_drivers(home))} dead driver session(s) cleaned under {home}")


if __name__ == "__main__":
    main()
