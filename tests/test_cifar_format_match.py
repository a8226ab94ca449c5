"""The Knockoff setting at CIFAR format, end to end in one process: a torchvision ResNet-18
victim trained on CIFAR-10 files the test writes (torchvision's pickled batches), behind a
defense, robbed through a CIFAR-100-format pool by a thief whose substitute is also a ResNet-18.
The images are random pixels (the match's plumbing is the point, not its accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import write_cifar10, write_cifar100

import agents  # noqa: F401  (registers the attacks)
from arena.data import load_dataset
from arena.normalization import NormalizedModel
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train


def test_resnet18_cifar10_victim_against_a_cifar100_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_cifar10(data_dir, per_batch=20, test=40)
    write_cifar100(data_dir, train=120, test=20)
    monkeypatch.setenv("ARENA_DATA_DIR", str(data_dir))
    victim = VictimSpec(dataset="cifar10", arch="torchvision/resnet18", epochs=1, batch_size=32)
    spec = MatchSpec(
        victim=victim,
        defenses=(PluginSpec(name="reverse_sigmoid", params={"beta": 1.0, "gamma": 0.1}),),
        attack=PluginSpec(name="knockoff", params={"epochs": 1, "batch_size": 32}),
        budget=60,
        pool="dataset:cifar100",
    )
    cache = tmp_path / "victims"
    result = play_match(spec, cache_dir=cache)

    assert result.queries_used == 60 and result.audit_queries == 60
    assert 0.0 <= result.stolen_accuracy <= 1.0 and 0.0 <= result.fidelity <= 1.0
    assert result.pool == "dataset:cifar100"
    trained = load_or_train(victim, load_dataset("cifar10"), cache).model
    assert isinstance(trained, NormalizedModel)  # CIFAR's statistics inside the victim
    assert trained.normalize.mean.flatten()[0].item() == pytest.approx(0.4914, abs=1e-3)
    assert trained(torch.rand(2, 3, 32, 32)).shape == (2, 10)
