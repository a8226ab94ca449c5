"""What a tournament config costs in compute, measured at small scale here and extrapolated.

For a config meant for a GPU cluster (``configs/cifar10_resnet18.yaml``) nothing of its real
size runs on this 2-core CPU. This script:

1. measures, for each architecture the config uses, on inputs of its dataset's shape, the
   seconds per image of a training step (forward, backward, Adam; batch 128) and of inference
   (batch 256), with one torch thread (what a match task with ``cpus_per_match: 1`` gets);
2. checks that per-image model on a real small run: a victim of the config's first architecture
   trained on random images of the same shape (an ``npz:`` dataset written to a temporary
   folder) and one Knockoff match against it, each timed and compared with what the model
   predicts for the same image counts;
3. adds up what every victim and match of the config does:

   * a victim: ``train_size × epochs`` training images (``train_size`` unset: the split's size,
     40,000 for CIFAR-10), plus one pass over the 10,000 test images;
   * a match: ``budget`` victim inferences (the queries), ``budget × epochs`` substitute training
     images (the attack's ``epochs``, its class default when the config leaves it out), and one
     substitute pass over the test set.

It is a lower bound of the matches' compute: attack-specific work (Knockoff's bandit, JBDA's
augmentation rounds, ActiveThief's selection rounds retraining from scratch, DFME's generator),
defenses that train models, and Ray's overheads are not counted. GPU time is not measured (no
GPU here); the table says so instead of guessing a speed-up.

Usage (from the repository root)::

    python benchmarks/config_cost.py [--config configs/cifar10_resnet18.yaml] [--seconds 20]
        [--out benchmarks/results/config_cost.json] [--quick]
    python benchmarks/config_cost.py --render benchmarks/results/config_cost.json   # Markdown
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine import write_record
from rich.console import Console
from rich.table import Table

import agents  # noqa: F401  (registers the attacks)
from arena.attacker import ATTACKS
from arena.data import INPUT_SHAPES, NUM_CLASSES, load_dataset
from arena.models import build_model
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import train_victim
from orchestration.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN_BATCH = 128
INFER_BATCH = 256
TEST_IMAGES = 10_000
SPLIT_TRAIN_IMAGES = {"cifar10": 40_000, "cifar100": 40_000, "svhn": 58_606}
"""a victim's training images when the config does not cap them (the loaders' victim splits)"""
CHECK_TRAIN, CHECK_TEST, CHECK_BUDGET, CHECK_EPOCHS = 512, 256, 512, 2
"""the small run that checks the per-image model: images, test images, queries, thief epochs"""


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


class CostModel:
    """Seconds per image per (architecture, dataset shape, train or inference), measured once."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.rates: dict[str, float] = {}

    def rate(self, arch: str, dataset: str, train: bool) -> float:
        key = f"{arch}@{dataset}:{'train' if train else 'infer'}"
        if key not in self.rates:
            shape = INPUT_SHAPES[dataset]
            classes = NUM_CLASSES[dataset]
            self.rates[key] = seconds_per_image(arch, shape, classes, train, self.budget_s)
        return self.rates[key]

    def victim_seconds(self, arch: str, dataset: str, train_images: int, test: int) -> float:
        return train_images * self.rate(arch, dataset, True) + test * self.rate(
            arch, dataset, False
        )

    def match_seconds(
        self, victim_arch: str, arch: str, dataset: str, budget: int, epochs: int, test: int
    ) -> float:
        return (
            budget * self.rate(victim_arch, dataset, False)
            + budget * epochs * self.rate(arch, dataset, True)
            + test * self.rate(arch, dataset, False)
        )


def small_run(arch: str, dataset: str, cost: CostModel, workdir: Path) -> dict[str, float]:
    """A victim and one Knockoff match of ``arch`` on random images of ``dataset``'s shape,
    timed, against what the per-image model predicts for them."""
    channels, height, width = INPUT_SHAPES[dataset]
    classes = NUM_CLASSES[dataset]
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, height, width, channels), dtype=np.uint8)

    path = workdir / "random.npz"
    np.savez(
        path,
        x_train=images(CHECK_TRAIN),
        y_train=np.arange(CHECK_TRAIN) % classes,
        x_test=images(CHECK_TEST),
        y_test=np.arange(CHECK_TEST) % classes,
        x_pool=images(CHECK_BUDGET),
        y_pool=np.arange(CHECK_BUDGET) % classes,
    )
    data = load_dataset(f"npz:{path}")
    victim = VictimSpec(dataset=f"npz:{path}", arch=arch, epochs=1, batch_size=TRAIN_BATCH)
    start = time.perf_counter()
    trained = train_victim(victim, data)
    victim_measured = time.perf_counter() - start
    del trained
    spec = MatchSpec(
        victim=victim,
        defenses=(),
        attack=PluginSpec(name="knockoff", params={"epochs": CHECK_EPOCHS}),
        budget=CHECK_BUDGET,
    )
    start = time.perf_counter()
    play_match(spec, data, workdir / "victims")
    match_measured = time.perf_counter() - start - victim_measured  # it trains its victim too
    return {
        "victim_measured_s": victim_measured,
        "victim_predicted_s": cost.victim_seconds(arch, dataset, CHECK_TRAIN, CHECK_TEST),
        "match_measured_s": match_measured,
        "match_predicted_s": cost.match_seconds(
            arch, arch, dataset, CHECK_BUDGET, CHECK_EPOCHS, CHECK_TEST
        ),
    }


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def render(record: dict[str, Any]) -> str:
    """The docs table, from the JSON record alone (date and commit included)."""
    check = record["small_run"]
    lines = [
        f"`{record['config']}`: {record['matches']} matches, {record['victims']} victim(s). "
        f"Measured {record['finished'][:16].replace('T', ' ')} UTC at commit {record['commit']}, "
        f"one torch thread, load average {record['machine']['loadavg_start'][0]:.1f}–"
        f"{record['machine']['loadavg_end'][0]:.1f}.",
        "",
        "| quantity | value |",
        "|:---|---:|",
    ]
    for key, seconds in sorted(record["seconds_per_image"].items()):
        lines.append(f"| {key} (ms per image) | {seconds * 1e3:.2f} |")
    lines += [
        f"| small run, victim ({CHECK_TRAIN} images × 1 epoch + {CHECK_TEST} test): measured / "
        f"predicted (s) | {check['victim_measured_s']:.1f} / {check['victim_predicted_s']:.1f} |",
        f"| small run, knockoff match ({CHECK_BUDGET} queries × {CHECK_EPOCHS} epochs): measured "
        f"/ predicted (s) | {check['match_measured_s']:.1f} / {check['match_predicted_s']:.1f} |",
        f"| victims, one CPU thread (hours) | {record['victim_cpu_hours']:.1f} |",
        f"| matches, one CPU thread (hours, lower bound) | {record['match_cpu_hours']:.0f} |",
        f"| whole config on this machine's {record['cores']} cores (days, lower bound) | "
        f"{record['wall_days_on_these_cores']:.0f} |",
        "| on a GPU | not measured (no GPU here) |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/cifar10_resnet18.yaml")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/config_cost.json")
    parser.add_argument("--quick", action="store_true", help="1 s per measurement (smoke)")
    parser.add_argument("--render", type=Path, help="print a record's Markdown table and stop")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    loadavg = os.getloadavg()
    torch.set_num_threads(1)
    cost = CostModel(1.0 if args.quick else args.seconds)

    config = load_config(args.config)
    matches = config.matches()
    victims = {m.victim.key(): m.victim for m in matches}
    victim_s = sum(
        cost.victim_seconds(
            v.arch,
            v.dataset,
            (v.train_size or SPLIT_TRAIN_IMAGES[v.dataset]) * v.epochs,
            TEST_IMAGES,
        )
        for v in victims.values()
    )
    match_s = sum(
        cost.match_seconds(
            m.victim.arch,
            m.substitute_arch or m.victim.arch,
            m.victim.dataset,
            m.budget,
            attack_epochs(m.attack.name, m.attack.params),
            TEST_IMAGES,
        )
        for m in matches
    )
    first = next(iter(victims.values()))
    with tempfile.TemporaryDirectory() as workdir:
        check = small_run(first.arch, first.dataset, cost, Path(workdir))

    cores = os.cpu_count() or 1
    fields = {
        "config": str(args.config.resolve().relative_to(REPO)),
        "commit": commit(),
        "matches": len(matches),
        "victims": len(victims),
        "seconds_per_image": cost.rates,
        "small_run": check,
        "victim_cpu_hours": victim_s / 3600,
        "match_cpu_hours": match_s / 3600,
        "cores": cores,
        "wall_days_on_these_cores": (victim_s + match_s) / cores / 86400,
        "threads": 1,
        "measure_seconds": cost.budget_s,
        "quick": args.quick,
        "note": "lower bound: attack-specific work, defenses' training and Ray overheads not "
        "counted; no GPU measured",
    }
    write_record(args.out, "config_cost", loadavg, fields)
    record = json.loads(args.out.read_text())
    table = Table(title=f"{args.config.name}: cost measured per image and extrapolated")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for line in render(record).splitlines()[4:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table.add_row(*cells)
    Console().print(table)


if __name__ == "__main__":
    main()
