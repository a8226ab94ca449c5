"""Datasets and the benchmark splits: victim training set, disjoint attacker pool, test set.

Images are float32 in [0, 1], shaped ``[N, C, H, W]``; labels are int64.
Fashion-MNIST comes from (in order) an unpacked copy under the data dir, the Debian package
``dataset-fashion-mnist``, or a torchvision download.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arena.errors import DatasetMissing
from arena.home import ArenaHome
from arena.registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Split:
    """One slice of a dataset."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class DataSplits:
    """The three disjoint slices every match uses (DESIGN §5)."""

    name: str
    victim_train: Split
    attacker_pool: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.test.x.shape[1:])


DatasetLoader = Callable[[Path], DataSplits]
DATASETS: Registry[DatasetLoader] = Registry("dataset")
NUM_CLASSES: dict[str, int] = {"fashion_mnist": 10, "digits": 10}
"""classes per registered dataset, known without loading it (configs are checked against it)"""
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"fashion_mnist": (1, 28, 28), "digits": (1, 8, 8)}
"""image shape per registered dataset, known without loading it (a victim's checkpoint is
checked against it with the config; a dataset missing here is checked once loaded)"""


def default_data_dir() -> Path:
    """``ARENA_DATA_DIR`` if set, else ``<ARENA_HOME>/data`` (for callers without a home)."""
    return ArenaHome.from_environment().data_dir


def load_dataset(name: str, data_dir: Path | None = None) -> DataSplits:
    """Load a registered dataset and its splits; raises DatasetMissing with the fix."""
    loader = DATASETS.get(name)
    return loader(data_dir or default_data_dir())


def _unpack_debian_fashion_mnist(raw: Path) -> bool:
    """Copy the Debian package's .gz files into torchvision's raw layout, uncompressed."""
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for fname in FASHION_MNIST_FILES:
        target = raw / fname
        if target.is_file():
            continue
        tmp = raw / f".{fname}.{os.getpid()}.tmp"
        with gzip.open(DEBIAN_FASHION_MNIST / f"{fname}.gz", "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return True


def _to_float_images(images: torch.Tensor) -> torch.Tensor:
    return (images.to(torch.float32) / 255.0).unsqueeze(1).contiguous()


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: Path) -> DataSplits:
    """Fashion-MNIST 28x28 grey clothes, 10 classes: victim train[:50000], pool train[50000:]."""
    from torchvision.datasets import FashionMNIST

    raw = data_dir / "FashionMNIST" / "raw"
    have_raw = all((raw / f).is_file() for f in FASHION_MNIST_FILES)
    download = False
    if not have_raw and not _unpack_debian_fashion_mnist(raw):
        download = True
    try:
        train = FashionMNIST(str(data_dir), train=True, download=download)
        test = FashionMNIST(str(data_dir), train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise DatasetMissing(
            f"Fashion-MNIST is not in {raw} and could not be downloaded ({type(exc).__name__}); "
            "install it with `apt-get install dataset-fashion-mnist` or set ARENA_DATA_DIR to a "
            "folder holding FashionMNIST/raw/"
        ) from None
    train_x, train_y = _to_float_images(train.data), train.targets.to(torch.int64)
    return DataSplits(
        name="fashion_mnist",
        victim_train=Split(train_x[:50000], train_y[:50000]),
        attacker_pool=Split(train_x[50000:], train_y[50000:]),
        test=Split(_to_float_images(test.data), test.targets.to(torch.int64)),
        num_classes=10,
        class_names=tuple(train.classes),
    )


@DATASETS.register("digits")
def digits(data_dir: Path) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images): a tiny real dataset for tests."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order].contiguous(), y[order].contiguous()
    return DataSplits(
        name="digits",
        victim_train=Split(x[:1000], y[:1000]),
        attacker_pool=Split(x[1000:1400], y[1000:1400]),
        test=Split(x[1400:], y[1400:]),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )
