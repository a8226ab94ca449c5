"""The torchvision datasets beyond Fashion-MNIST, read from tiny files in each real on-disk layout
(IDX, CIFAR's pickled batches, SVHN's .mat), and the normalisation they declare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import write_cifar10, write_cifar100, write_mnist, write_svhn
from torch import nn

from arena.data import NUM_CLASSES, DataSplits, load_dataset
from arena.errors import DatasetMissing
from arena.normalization import Normalize, normalized


def check_splits(d: DataSplits, shape: tuple[int, ...], sizes: tuple[int, int, int]) -> None:
    """Types, shapes, [0, 1] values and sizes of the three splits."""
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == sizes
    assert d.input_shape == shape
    for split in (d.victim_train, d.attacker_pool, d.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    assert d.num_classes == NUM_CLASSES[d.name]


def check_tail_split(d: DataSplits, train_x: torch.Tensor, train_y: torch.Tensor) -> None:
    """Victim part then pool are the official train split in order: disjoint, nothing lost."""
    assert torch.equal(torch.cat([d.victim_train.x, d.attacker_pool.x]), train_x)
    assert torch.equal(torch.cat([d.victim_train.y, d.attacker_pool.y]), train_y)
    victim = {tuple(row) for row in d.victim_train.x.flatten(1).tolist()}
    assert not victim & {tuple(row) for row in d.attacker_pool.x.flatten(1).tolist()}


def scaled(byte: np.uint8) -> float:
    """A byte as the loaders scale it, in float32."""
    return float(np.float32(byte) / np.float32(255))


def same(a: DataSplits, b: DataSplits) -> bool:
    pairs = ((a.victim_train, b.victim_train), (a.attacker_pool, b.attacker_pool), (a.test, b.test))
    return all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in pairs)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("kmnist", "KMNIST")])
def test_mnist_family_from_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_mnist(tmp_path, folder, train=12, test=5)
    d = load_dataset(name, tmp_path)
    check_splits(d, (1, 28, 28), (10, 2, 5))  # the last sixth is the pool
    train_x = torch.from_numpy(arrays["x_train"]).float().div(255).unsqueeze(1)
    check_tail_split(d, train_x, torch.from_numpy(arrays["y_train"]).long())
    assert torch.equal(d.test.x, torch.from_numpy(arrays["x_test"]).float().div(255).unsqueeze(1))
    assert len(d.class_names) == 10 and d.normalization is None
    assert same(d, load_dataset(name, tmp_path))
    # files already there: torchvision's download is a no-op, nothing is fetched
    assert same(d, load_dataset(name, tmp_path, download=True))


def test_cifar10_from_pickled_batches(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path, per_batch=3, test=4)
    d = load_dataset("cifar10", tmp_path)
    check_splits(d, (3, 32, 32), (12, 3, 4))  # the last fifth of 15 is the pool
    train_x = torch.from_numpy(arrays["x_train"].reshape(-1, 3, 32, 32)).float().div(255)
    check_tail_split(d, train_x, torch.from_numpy(arrays["y_train"]))
    # channel-major rows: byte 1024 is the green plane's first pixel
    assert float(d.test.x[1, 1, 0, 0]) == scaled(arrays["x_test"][1, 1024])
    assert d.test.y.tolist() == arrays["y_test"].tolist()
    assert d.class_names[0] == "airplane" and len(d.class_names) == 10
    assert d.normalization == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert same(d, load_dataset("cifar10", tmp_path))


def test_cifar100_from_pickled_sets(tmp_path: Path) -> None:
    arrays = write_cifar100(tmp_path, train=10, test=3)
    d = load_dataset("cifar100", tmp_path)
    check_splits(d, (3, 32, 32), (8, 2, 3))
    train_x = torch.from_numpy(arrays["x_train"].reshape(-1, 3, 32, 32)).float().div(255)
    check_tail_split(d, train_x, torch.from_numpy(arrays["y_train"]))
    assert int(d.victim_train.y.max()) > 10  # the fine labels, not the coarse ones
    assert d.class_names == tuple(f"fine{i}" for i in range(100))
    assert d.normalization == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def test_svhn_from_mat_files(tmp_path: Path) -> None:
    arrays = write_svhn(tmp_path, train=11, test=4)
    d = load_dataset("svhn", tmp_path)
    check_splits(d, (3, 32, 32), (9, 2, 4))  # the last fifth of 11, rounded down
    # X is [H, W, C, N]; label 10 is the digit 0
    assert float(d.test.x[2, 1, 5, 7]) == scaled(arrays["x_test"][5, 7, 1, 2])
    assert d.test.y.tolist() == [1, 2, 3, 4]
    assert d.victim_train.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert d.attacker_pool.y.tolist() == [0, 1]  # 10 became 0
    assert d.normalization == ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    assert same(d, load_dataset("svhn", tmp_path))


@pytest.mark.parametrize(
    "name, where",
    [
        ("mnist", "MNIST/raw"),
        ("kmnist", "KMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", ""),
    ],
)
def test_missing_files_name_the_folder_and_the_fix_without_downloading(
    tmp_path: Path, name: str, where: str
) -> None:
    data_dir = tmp_path / "empty"
    with pytest.raises(DatasetMissing) as info:
        load_dataset(name, data_dir)
    message = str(info.value)
    assert "\n" not in message
    assert str(data_dir / where).rstrip("/") in message
    assert "download: true" in message and "ARENA_DATA_DIR" in message
    assert not data_dir.exists()  # nothing fetched, nothing created


def test_a_damaged_cifar_batch_is_dataset_missing(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2, test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetMissing) as info:
        load_dataset("cifar10", tmp_path)
    assert "UnpicklingError" in str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_normalize_standardises_each_channel() -> None:
    layer = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = layer(x)
    assert torch.allclose(out[:, 0], torch.ones(2, 4, 4))
    assert torch.allclose(out[:, 1], torch.ones(2, 4, 4))
    assert torch.allclose(out[:, 2], torch.full((2, 4, 4), 0.5))
    assert set(layer.state_dict()) == {"mean", "std"}  # saved with the weights
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))


def test_normalized_wraps_the_model_or_leaves_it_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 4))
    assert normalized(model, None) is model  # datasets without one: bit-identical models
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    wrapped = normalized(model, (mean, std))
    x = torch.rand(5, 3, 2, 2)
    expected = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(wrapped(x), expected, atol=1e-6)
    assert not torch.allclose(wrapped(x), model(x))


def test_every_registered_dataset_declares_its_classes_and_shape() -> None:
    from arena.data import DATASETS, INPUT_SHAPES

    assert set(NUM_CLASSES) == set(DATASETS.names()) == set(INPUT_SHAPES)
    assert np.all([len(INPUT_SHAPES[n]) == 3 for n in INPUT_SHAPES])
