"""What a tournament config costs in compute, measured at small scale here and extrapolated.

For a config meant for a GPU cluster (``configs/cifar10_resnet18.yaml``) nothing of its real
size runs on this 2-core CPU. This script measures, for each architecture the config uses on
inputs of the config's shape, the seconds per image of a training step (forward, backward, Adam)
and of inference, on this CPU with one torch thread (what a match task with ``cpus_per_match: 1``
gets), then adds up what every match and victim of the config would do:

* a victim: ``train_size × epochs`` training images, plus one pass over the test set;
* a match: ``budget`` victim inferences (the queries), ``budget × epochs`` substitute training
  images (the attack's ``epochs``, its class default when the config leaves it out), and one
  substitute pass over the test set.

It is a lower bound of the matches' compute on this CPU: attack-specific work (Knockoff's
bandit, JBDA's augmentation rounds, DFME's generator) and Ray's overheads are not counted. GPU
time is not measured here (no GPU); the table says so rather than guessing a speed-up.

Usage (from the repository root)::

    python benchmarks/config_cost.py [--config configs/cifar10_resnet18.yaml] [--seconds 20]
        [--out benchmarks/results/config_cost.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from machine import write_record
from rich.console import Console
from rich.table import Table

from arena.attacker import ATTACKS
from arena.data import NUM_CLASSES
from arena.models import build_model
from orchestration.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN_BATCH = 128
INFER_BATCH = 256
DEFAULT_TEST_IMAGES = 10_000
VICTIM_TRAIN_IMAGES = 40_000
"""a victim's training images when the config does not cap them (CIFAR-10's victim split)"""
INPUT_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "svhn": (3, 32, 32)}
"""image shapes of the datasets this script is meant for, known without their files here"""


def seconds_per_image(
    arch: str, shape: tuple[int, ...], classes: int, train: bool, budget_s: float
) -> float:
    """Median seconds per image over repeated batches of random inputs, after one warm-up."""
    model = build_model(arch, shape, classes, seed=0)
    batch = TRAIN_BATCH if train else INFER_BATCH
    x = torch.rand(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train(train)

    def step() -> None:
        if train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model(x)

    step()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] / batch


def attack_epochs(name: str, params: dict[str, Any]) -> int:
    """The substitute epochs an attack trains for: its parameter, else its class default."""
    if "epochs" in params:
        return int(params["epochs"])
    cls = ATTACKS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    field = fields.get("epochs")
    return int(field.default) if field is not None and isinstance(field.default, int) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/cifar10_resnet18.yaml")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/config_cost.json")
    parser.add_argument("--quick", action="store_true", help="1 s per measurement (smoke)")
    args = parser.parse_args()
    budget_s = 1.0 if args.quick else args.seconds
    loadavg = os.getloadavg()
    torch.set_num_threads(1)

    config = load_config(args.config)
    matches = config.matches()
    victims = {m.victim.key(): m.victim for m in matches}
    rates: dict[tuple[str, bool], float] = {}

    def rate(arch: str, dataset: str, train: bool) -> float:
        key = (f"{arch}@{dataset}", train)
        if key not in rates:
            shape = INPUT_SHAPES.get(dataset, (1, 28, 28))
            rates[key] = seconds_per_image(arch, shape, NUM_CLASSES[dataset], train, budget_s)
        return rates[key]

    victim_s = 0.0
    for victim in victims.values():
        train_images = (victim.train_size or VICTIM_TRAIN_IMAGES) * victim.epochs
        victim_s += train_images * rate(victim.arch, victim.dataset, True)
        victim_s += DEFAULT_TEST_IMAGES * rate(victim.arch, victim.dataset, False)
    match_s = 0.0
    for match in matches:
        arch = match.substitute_arch or match.victim.arch
        dataset = match.victim.dataset
        epochs = attack_epochs(match.attack.name, match.attack.params)
        match_s += match.budget * rate(match.victim.arch, dataset, False)
        match_s += match.budget * epochs * rate(arch, dataset, True)
        match_s += DEFAULT_TEST_IMAGES * rate(arch, dataset, False)

    table = Table(title=f"{args.config.name}: {len(matches)} matches, {len(victims)} victim(s)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for (name, train), seconds in sorted(rates.items()):
        kind = "train step" if train else "inference"
        table.add_row(f"{name} {kind}, 1 thread (ms/image)", f"{seconds * 1e3:.3f}")
    table.add_row("victims, 1 CPU thread (hours)", f"{victim_s / 3600:.1f}")
    table.add_row("matches, 1 CPU thread (hours)", f"{match_s / 3600:.1f}")
    cores = os.cpu_count() or 1
    table.add_row(
        f"whole config on {cores} cores, matches in parallel (days)",
        f"{(victim_s + match_s) / cores / 86400:.1f}",
    )
    table.add_row("on a GPU", "not measured (no GPU here)")
    Console().print(table)
    write_record(
        args.out,
        "config_cost",
        loadavg,
        {
            "config": str(
                args.config.relative_to(REPO) if args.config.is_absolute() else args.config
            ),
            "matches": len(matches),
            "victims": len(victims),
            "seconds_per_image": {
                f"{k}:{'train' if t else 'infer'}": v for (k, t), v in rates.items()
            },
            "victim_cpu_hours": victim_s / 3600,
            "match_cpu_hours": match_s / 3600,
            "cores": cores,
            "wall_days_on_these_cores": (victim_s + match_s) / cores / 86400,
            "threads": 1,
            "measure_seconds": budget_s,
            "quick": args.quick,
            "note": "lower bound: attack-specific work and Ray overheads not counted",
        },
    )


if __name__ == "__main__":
    main()
