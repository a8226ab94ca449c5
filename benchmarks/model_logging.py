"""What ``tracking.log_models`` costs: seconds and megabytes per model logged by
:meth:`orchestration.tracking.Tracker.log_model` into a fresh SQLite MLflow store, for the digits
MLP and the Fashion-MNIST LeNet-5 (untrained weights: the cost depends on the architecture, not
on what it learnt). The first call of the process, which loads MLflow's PyTorch flavour, is
timed apart. Usage (from the repository root)::

    python benchmarks/model_logging.py [--repeats 5] [--out benchmarks/results/model_logging.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from machine import write_record
from torch import nn

from arena.models import lenet5, mlp
from orchestration.tracking import Tracker

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_logging.json"
MODELS: dict[str, tuple[tuple[int, ...], Any]] = {
    "digits mlp": ((1, 8, 8), mlp),
    "fashion_mnist lenet5": ((1, 28, 28), lenet5),
}


def _megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def _log_once(
    tracker: Tracker, run: str, model: nn.Module, name: str, shape: tuple[int, ...]
) -> tuple[float, float]:
    """Seconds to log ``model`` and the size of what was stored."""
    started = time.perf_counter()
    model_id = tracker.log_model(run, model, name, torch.rand(8, *shape))
    seconds = time.perf_counter() - started
    stored = tracker.client.get_logged_model(model_id).artifact_location  # file:///.../artifacts
    return seconds, _megabytes(Path(urlparse(stored).path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    load = os.getloadavg()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracker = Tracker(f"sqlite:///{root}/mlflow.db", "model-logging", root / "artifacts")
        run = tracker.client.create_run(tracker.experiment_id, run_name="bench").info.run_id
        first, _ = _log_once(tracker, run, mlp((1, 8, 8), 10), "first", (1, 8, 8))
        for label, (shape, build) in MODELS.items():
            model = build(shape, 10)
            timed = [_log_once(tracker, run, model, f"m{i}", shape) for i in range(args.repeats)]
            seconds = [s for s, _ in timed]
            rows[label] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds_median": statistics.median(seconds),
                "seconds_min": min(seconds),
                "seconds_max": max(seconds),
                "megabytes": statistics.median(mb for _, mb in timed),
            }
            print(f"{label}: {rows[label]}")
    print(f"first call of the process (loads the flavour): {first:.2f} s")
    write_record(args.out, "model_logging", load, {"first_call_seconds": first, "models": rows})


if __name__ == "__main__":
    main()
