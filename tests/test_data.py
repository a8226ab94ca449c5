"""Datasets and benchmark splits; a missing Fashion-MNIST fails with a typed error saying how to
get it."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import arena.data
from arena.data import DATASETS, DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, DataSplits, Split
from arena.errors import DatasetMissing, UnknownPlugin


def rows(split: Split) -> np.ndarray:
    """Each example as one row (pixels then label), for multiset comparisons."""
    x = split.x.reshape(len(split), -1).numpy().astype(np.float64)
    return np.concatenate([x, split.y.numpy()[:, None].astype(np.float64)], axis=1)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_digits_splits_are_sized_typed_and_disjoint(digits_data: DataSplits) -> None:
    from sklearn.datasets import load_digits

    d = digits_data
    assert (d.name, d.num_classes, d.input_shape) == ("digits", 10, (1, 8, 8))
    assert d.class_names == tuple(str(i) for i in range(10))
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (1000, 400, 397)
    for split in (d.victim_train, d.attacker_pool, d.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.x.min() >= 0 and split.x.max() <= 1
        assert set(split.y.unique().tolist()) == set(range(10))  # every class in every split
    # Together the three splits are exactly the 1,797 digits, each used once: disjoint.
    bunch = load_digits()
    original = np.concatenate([bunch.data / 16.0, bunch.target[:, None]], axis=1)
    together = np.concatenate([rows(d.victim_train), rows(d.attacker_pool), rows(d.test)])
    np.testing.assert_allclose(sorted_rows(together), sorted_rows(original), atol=1e-7)
    assert len(np.unique(together, axis=0)) == 1797


def test_digits_splits_are_deterministic(digits_data: DataSplits) -> None:
    again = arena.data.load_dataset("digits")
    for a, b in (
        (digits_data.victim_train, again.victim_train),
        (digits_data.attacker_pool, again.attacker_pool),
        (digits_data.test, again.test),
    ):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UnknownPlugin) as info:
        arena.data.load_dataset("nope")
    assert "nope" in str(info.value)
    for name in ("digits", "fashion_mnist"):
        assert name in str(info.value)
    assert sorted(info.value.known) == DATASETS.names()


def test_data_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    assert arena.data.default_data_dir() == (tmp_path / "data").resolve()
    monkeypatch.delenv("ARENA_DATA_DIR")
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    assert arena.data.default_data_dir() == (tmp_path / "home" / "data").resolve()


@pytest.mark.parametrize(
    "failure",
    [
        OSError("network is unreachable"),
        urllib.error.URLError("no route to host"),
        RuntimeError("Error downloading train-images-idx3-ubyte.gz"),
    ],
    ids=["OSError", "URLError", "RuntimeError"],
)
@pytest.mark.parametrize("layout", ["missing_dir", "partial_raw"])
def test_fashion_mnist_missing_raises_dataset_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failure: Exception, layout: str
) -> None:
    from torchvision.datasets import FashionMNIST

    empty_debian = tmp_path / "debian"
    empty_debian.mkdir()
    monkeypatch.setattr(arena.data, "DEBIAN_FASHION_MNIST", empty_debian)
    attempts: list[str] = []

    def offline(self: FashionMNIST) -> None:
        attempts.append(self.root)
        raise failure

    monkeypatch.setattr(FashionMNIST, "download", offline)
    data_dir = tmp_path / "does" / "not" / "exist"
    if layout == "partial_raw":
        raw = data_dir / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / FASHION_MNIST_FILES[0]).write_bytes(b"")  # one of four files

    with pytest.raises(DatasetMissing) as info:
        arena.data.fashion_mnist(data_dir)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "ARENA_DATA_DIR" in message
    assert attempts, "the loader should have tried to download"
    with pytest.raises(DatasetMissing):
        arena.data.load_dataset("fashion_mnist", data_dir)


@pytest.mark.fmnist
@pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES),
    reason="needs `apt-get install dataset-fashion-mnist`",
)
def test_fashion_mnist_from_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from torchvision.datasets import FashionMNIST

    def no_network(self: FashionMNIST) -> None:
        raise AssertionError("must not download when the Debian package is installed")

    monkeypatch.setattr(FashionMNIST, "download", no_network)
    d = arena.data.load_dataset("fashion_mnist", tmp_path)
    assert (d.name, d.num_classes, d.input_shape) == ("fashion_mnist", 10, (1, 28, 28))
    assert len(d.class_names) == 10
    assert (len(d.victim_train), len(d.attacker_pool), len(d.test)) == (50000, 10000, 10000)
    for split in (d.victim_train, d.attacker_pool, d.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 28, 28)
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert float(split.x.max()) == 1.0  # scaled from 0..255, not left as bytes
        assert set(split.y.unique().tolist()) == set(range(10))
    # Victim train and pool are the two halves of the 60,000 training images, no overlap.
    train = FashionMNIST(str(tmp_path), train=True, download=False)
    assert len(train.data) == 60000
    expected_pool = train.data[50000:].float().div(255).unsqueeze(1)
    assert torch.equal(d.attacker_pool.x, expected_pool)
    assert torch.equal(d.victim_train.y, train.targets[:50000])
    # Unpacked once into the data dir (atomically); the next load needs no Debian package.
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)
    monkeypatch.setattr(arena.data, "DEBIAN_FASHION_MNIST", tmp_path / "gone")
    assert len(arena.data.load_dataset("fashion_mnist", tmp_path).test) == 10000
