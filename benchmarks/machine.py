"""What every benchmark records about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch


def machine_info(loadavg_start: tuple[float, float, float]) -> dict[str, Any]:
    """CPU, versions and the load average at start and end (the machine is shared and noisy)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_driver": torch.get_num_threads(),
        "ray": ray.__version__,
        "numpy": np.__version__,
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(os.getloadavg()),
    }


def git_commit() -> str:
    """The short commit of the checkout the benchmark runs from (stamped on its tables)."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()


def command_short() -> str:
    """The command that ran this benchmark as a reader would type it from the repository root:
    ``python`` and repository-relative paths (the absolute ones of a worktree mean nothing to
    anyone else)."""
    repo = Path(__file__).resolve().parents[1]

    def relative(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(repo):
            return str(path.resolve().relative_to(repo))
        return arg

    return shlex.join(["python", *map(relative, sys.argv)])


def measured_stamp(record: dict[str, Any]) -> str:
    """The line under a docs table rendered from a :func:`write_record` JSON: when it finished,
    at which commit, and the command that wrote it (older records may lack the last two)."""
    return (
        f"_Measured {record['finished'][:16].replace('T', ' ')} UTC at commit "
        f"{record.get('commit', 'unrecorded')} "
        f"(`{record.get('command_short', 'python benchmarks/' + record['benchmark'] + '.py')}`)._"
    )


def write_record(
    out: Path, benchmark: str, loadavg_start: tuple[float, float, float], fields: dict[str, Any]
) -> None:
    """Write a benchmark's JSON: its name, the exact command, when, the machine, then ``fields``."""
    record = {
        "benchmark": benchmark,
        "command": shlex.join([sys.executable, *sys.argv]),
        "command_short": command_short(),
        "finished": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
        "machine": machine_info(loadavg_start),
        **fields,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
