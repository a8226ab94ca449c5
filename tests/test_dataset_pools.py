"""Pools from another dataset (the Knockoff setting): tiny CIFAR-10/100 and MNIST files in their
real layouts, read by the real loaders, then granted against a victim of another dataset only
as the pool's explicit mapping says."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from dataset_files import write_cifar10, write_cifar100, write_mnist

from arena.data import DataSplits, load_dataset
from arena.errors import InvalidParameters
from arena.match_data import MatchData
from arena.pool_source import BUILT_IN_POOLS, DatasetPool, parse_pool, pool_text
from arena.pools import LUMA, pool_problem
from arena.referee import play_match
from arena.specs import MatchSpec, PluginSpec, PoolName, VictimSpec


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=2, test=3)
    write_cifar100(root, train=7, test=2)
    write_mnist(root, "MNIST", train=6, test=2)
    return root


def loaded(name: str, data_dir: Path) -> DataSplits:
    return load_dataset(name, data_dir)


def test_a_cifar100_pool_against_a_cifar10_victim(data_dir: Path) -> None:
    victim, other = loaded("cifar10", data_dir), loaded("cifar100", data_dir)
    granted = MatchData.from_splits(victim, "dataset:cifar100", other)
    assert granted.pool is not None and granted.pool_labels is None  # unlabeled
    assert tuple(granted.pool.shape) == (7, 3, 32, 32)
    everything = torch.cat([other.victim_train.x, other.attacker_pool.x])
    assert torch.equal(granted.pool, everything)  # the whole train split, unchanged
    assert granted.pool_name == "dataset:cifar100"
    assert torch.equal(granted.test_x, victim.test.x) and granted.num_classes == 10
    knowledge = granted.knowledge("mlp", upper_bound=True)
    assert knowledge.pool_labels is None and knowledge.input_shape == (3, 32, 32)


def test_an_mnist_pool_against_a_cifar_victim_is_resized_and_repeated(data_dir: Path) -> None:
    victim, mnist = loaded("cifar10", data_dir), loaded("mnist", data_dir)
    name = "dataset:mnist?resize=bilinear&channels=repeat"
    pool = MatchData.from_splits(victim, name, mnist).pool
    assert pool is not None and tuple(pool.shape) == (6, 3, 32, 32)
    assert pool.dtype == torch.float32
    assert float(pool.min()) >= 0.0 and float(pool.max()) <= 1.0
    assert torch.equal(pool[:, 0], pool[:, 1]) and torch.equal(pool[:, 1], pool[:, 2])
    nearest = MatchData.from_splits(victim, "dataset:mnist?resize=nearest&channels=repeat", mnist)
    assert nearest.pool is not None and not torch.equal(nearest.pool, pool)  # the mode matters


def test_a_cifar_pool_against_a_grey_victim_by_luminance(data_dir: Path) -> None:
    victim, cifar = loaded("mnist", data_dir), loaded("cifar10", data_dir)
    name = "dataset:cifar10?resize=area&channels=luminance"
    pool = MatchData.from_splits(victim, name, cifar).pool
    assert pool is not None and tuple(pool.shape) == (10, 1, 28, 28)
    # area-resizing is a weighted mean, so it commutes with the (linear) luminance
    colour = torch.cat([cifar.victim_train.x, cifar.attacker_pool.x])
    luma = (colour * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    expected = torch.nn.functional.interpolate(luma, size=(28, 28), mode="area")
    assert torch.allclose(pool, expected, atol=1e-6)


@pytest.mark.parametrize(
    "victim, pool, fix",
    [
        ("cifar10", "dataset:mnist", "add resize=bilinear"),
        ("cifar10", "dataset:mnist?resize=bilinear", "add channels=repeat"),
        ("cifar10", "dataset:mnist?resize=bilinear&channels=luminance", "add channels=repeat"),
        ("mnist", "dataset:cifar10?resize=area", "add channels=luminance"),
        ("cifar10", "dataset:cifar100?channels=repeat", "drop channels="),
        ("cifar10", "dataset:cifar10", "use the in_distribution pool"),
    ],
)
def test_an_unmapped_shape_is_an_error_naming_the_fix(
    data_dir: Path, victim: str, pool: str, fix: str
) -> None:
    parsed = parse_pool(pool)
    assert isinstance(parsed, DatasetPool)
    with pytest.raises(InvalidParameters) as info:
        MatchData.from_splits(loaded(victim, data_dir), pool, loaded(parsed.dataset, data_dir))
    assert fix in str(info.value) and "\n" not in str(info.value)
    found = pool_problem(pool, victim)  # the same problem, found without loading anything
    assert found is not None and fix in found


def test_pool_texts_are_canonical() -> None:
    assert pool_text("dataset:mnist?channels=repeat&resize=bilinear") == (
        "dataset:mnist?resize=bilinear&channels=repeat"
    )
    assert pool_text({"dataset": "mnist", "channels": "repeat", "resize": "bilinear"}) == (
        "dataset:mnist?resize=bilinear&channels=repeat"
    )
    assert pool_text({"dataset": "cifar100"}) == "dataset:cifar100"
    assert pool_text("in_distribution") == "in_distribution"
    assert get_args(PoolName) == BUILT_IN_POOLS
    for bad, says in [
        ("imagenet", "unknown pool 'imagenet'"),
        ("dataset:", "names its dataset"),
        ("dataset:mnist?resize=linear", "resize='linear'"),
        ("dataset:mnist?size=2", "'size' is unknown"),
        ("dataset:mnist?resize=area&resize=nearest", "given twice"),
        ("dataset:npz:/x\x1b[2J.npz", "printable text"),
        ("dataset:npz:/" + "x" * 600, "at most 500"),
    ]:
        with pytest.raises(ValueError, match=says):
            pool_text(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        pool_text({"dataset": "mnist", "scale": 2})


def test_built_in_pools_keep_their_match_keys() -> None:
    """Keys seed every match's randomness: the built-in pools hash as before dataset pools."""

    def key(pool: str) -> str:
        return MatchSpec(
            victim=VictimSpec(dataset="digits", arch="mlp"),
            defenses=(PluginSpec(name="none"),),
            attack=PluginSpec(name="knockoff"),
            budget=100,
            pool=pool,
        ).key()

    assert key("in_distribution") == "60cba71cfa800c5e"
    assert key("out_of_distribution") == "1f97a384832fcacd"
    assert key("none") == "52337aa4ddb3710a"
    assert key("dataset:mnist?channels=repeat&resize=bilinear") == key(
        "dataset:mnist?resize=bilinear&channels=repeat"
    )
    assert len({key("dataset:mnist"), key("dataset:kmnist"), key("in_distribution")}) == 3


def test_pool_problems_known_without_loading() -> None:
    assert pool_problem("in_distribution", "cifar10") is None
    assert pool_problem("dataset:cifar100", "cifar10") is None
    assert pool_problem("dataset:svhn", "cifar100") is None
    assert pool_problem("dataset:kmnist", "fashion_mnist") is None
    assert "unknown dataset" in (pool_problem("dataset:imagenet", "cifar10") or "")
    assert pool_problem("dataset:npz:/x.npz", "cifar10") is None  # checked when loaded
    assert np.isclose(sum(LUMA), 1.0)


def test_a_match_with_a_user_dataset_pool(
    tmp_path: Path, digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """A whole match in this process: the digits victim queried with a 16x16 npz pool,
    area-resized to the victim's 8x8."""
    path = tmp_path / "pool.npz"
    images = np.random.default_rng(3).random((40, 16, 16)).astype(np.float32)
    labels = np.arange(40) % 4
    np.savez(path, x_train=images, y_train=labels, x_test=images[:4], y_test=labels[:4])
    spec = MatchSpec(
        victim=digits_victim_spec,
        defenses=(PluginSpec(name="none"),),
        attack=PluginSpec(name="copycat", params={"epochs": 2}),
        budget=30,
        pool={"dataset": f"npz:{path}", "resize": "area"},  # type: ignore[arg-type]
    )
    assert spec.pool == f"dataset:npz:{path}?resize=area"
    result = play_match(spec, digits_data, victim_cache)
    assert result.pool == spec.pool and result.queries_used == 30
    with pytest.raises(InvalidParameters, match="add resize=bilinear"):
        play_match(spec.model_copy(update={"pool": f"dataset:npz:{path}"}), digits_data)
