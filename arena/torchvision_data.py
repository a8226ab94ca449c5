"""The torchvision datasets beyond Fashion-MNIST, each read from torchvision's own layout under
the data dir and fetched by torchvision's own download only when the user asks
(``download: true``).

MNIST and KMNIST are read by their torchvision classes. CIFAR-10/100 and SVHN are read from the
same files by :func:`read_cifar` and :func:`read_svhn`: their torchvision classes insist on the
official files' md5 sums on every load, which a subset (or a test's tiny file) cannot match.
Their download still goes through torchvision, which checks those sums as it fetches.

Splits: ``test`` is the official test split; the official train split is cut by
:func:`arena.data.tail_split`, its last share being the attacker pool.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.data import (
    DATASETS,
    MNIST_POOL_SHARE,
    DataSplits,
    Split,
    _to_float_images,
    tail_split,
)
from arena.errors import DatasetMissing, one_line
from arena.normalization import Normalization

CIFAR_POOL_SHARE = 5
"""CIFAR's pool: the last fifth of the 50,000 training images, ``train[40000:]``"""
SVHN_POOL_SHARE = 5
"""SVHN's pool: the last fifth (rounded down) of the 73,257 training images, ``train[58606:]``"""
CIFAR10_NORMALIZATION: Normalization = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORMALIZATION: Normalization = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_NORMALIZATION: Normalization = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
"""the per-channel mean and std of each training set, as commonly quoted"""


def missing(title: str, folder: Path, reason: str) -> DatasetMissing:
    """The one-line error for absent or unreadable files: where it looked, and the fixes."""
    return DatasetMissing(
        f"{title} is not readable in {folder} ({one_line(reason, 160)}); set `download: true` "
        "(on a machine with network), or copy torchvision's files there, or point "
        "ARENA_DATA_DIR at a folder holding them"
    )


def download_failed(title: str, folder: Path, exc: Exception) -> DatasetMissing:
    """The one-line error for a download that failed (offline, or a checksum mismatch)."""
    return DatasetMissing(
        f"{title} could not be downloaded into {folder} ({type(exc).__name__}); without "
        "network, copy torchvision's files there or point ARENA_DATA_DIR at a folder holding them"
    )


def _reason(exc: Exception) -> str:
    """Why files could not be read, briefly: the missing file's name, else the error."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no {Path(str(exc.filename)).name}"
    return f"{type(exc).__name__}: {exc}"


def uint8_images(images: np.ndarray[Any, Any]) -> torch.Tensor:
    """``[N, C, H, W]`` bytes as float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div(255.0)


def _download(title: str, folder: Path, fetch: Callable[[], object]) -> None:
    """Run torchvision's download (it checks the official md5 sums); offline: DatasetMissing."""
    try:
        fetch()
    except (RuntimeError, OSError) as exc:
        raise download_failed(title, folder, exc) from None


def _mnist_family(name: str, title: str, data_dir: Path, download: bool) -> DataSplits:
    """MNIST or KMNIST through torchvision's class (it checks that the raw files exist)."""
    from torchvision.datasets import KMNIST, MNIST

    cls = {"mnist": MNIST, "kmnist": KMNIST}[name]
    raw = data_dir / cls.__name__ / "raw"
    try:
        train = cls(str(data_dir), train=True, download=download)
        test = cls(str(data_dir), train=False, download=download)
    except (RuntimeError, OSError, ValueError, AssertionError) as exc:
        if download:
            raise download_failed(title, raw, exc) from None
        raise missing(title, raw, f"files missing or unreadable: {type(exc).__name__}") from None
    victim_train, pool = tail_split(
        _to_float_images(train.data), train.targets.to(torch.int64), MNIST_POOL_SHARE
    )
    return DataSplits(
        name=name,
        victim_train=victim_train,
        attacker_pool=pool,
        test=Split(_to_float_images(test.data), test.targets.to(torch.int64)),
        num_classes=10,
        class_names=tuple(train.classes),
    )


@DATASETS.register("mnist")
def mnist(data_dir: Path, download: bool = False) -> DataSplits:
    """MNIST 28x28 grey digits, 10 classes (MNIST/raw/): victim train[:50000], pool the rest.

    The test split is the official 10,000 images; no normalisation, as for Fashion-MNIST."""
    return _mnist_family("mnist", "MNIST", data_dir, download)


@DATASETS.register("kmnist")
def kmnist(data_dir: Path, download: bool = False) -> DataSplits:
    """Kuzushiji-MNIST 28x28 grey characters, 10 classes (KMNIST/raw/): pool train[50000:].

    Victim train[:50000]; the test split is the official 10,000 images; no normalisation."""
    return _mnist_family("kmnist", "KMNIST", data_dir, download)


def _unpickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} holds a {type(entry).__name__}, not a CIFAR batch")
    return entry


def read_cifar(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` in [0, 1] and int64 labels from CIFAR's pickled batches
    (each a dict with ``data``, uint8 ``[n, 3072]`` channel-major, and ``label_key``)."""
    images, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return uint8_images(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _cifar(name: str, data_dir: Path, download: bool) -> DataSplits:
    """CIFAR-10 or CIFAR-100 from torchvision's folder of pickled batches."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = data_dir / cls.base_folder
    if download:
        _download(title, folder, lambda: cls(str(data_dir), train=True, download=True))
    label_key = "labels" if name == "cifar10" else "fine_labels"
    try:
        train_x, train_y = read_cifar(folder, [f for f, _ in cls.train_list], label_key)
        test_x, test_y = read_cifar(folder, [f for f, _ in cls.test_list], label_key)
        classes = tuple(_unpickle(folder / cls.meta["filename"])[cls.meta["key"]])
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as exc:
        raise missing(title, folder, _reason(exc)) from None
    victim_train, pool = tail_split(train_x, train_y, CIFAR_POOL_SHARE)
    return DataSplits(
        name=name,
        victim_train=victim_train,
        attacker_pool=pool,
        test=Split(test_x, test_y),
        num_classes=len(classes),
        class_names=classes,
        normalization=CIFAR10_NORMALIZATION if name == "cifar10" else CIFAR100_NORMALIZATION,
    )


@DATASETS.register("cifar10")
def cifar10(data_dir: Path, download: bool = False) -> DataSplits:
    """CIFAR-10 32x32 colour, 10 classes (cifar-10-batches-py/): pool train[40000:], normalised.

    Victim train[:40000]; the test split is the official 10,000 images; the model's first layer
    applies :data:`CIFAR10_NORMALIZATION`."""
    return _cifar("cifar10", data_dir, download)


@DATASETS.register("cifar100")
def cifar100(data_dir: Path, download: bool = False) -> DataSplits:
    """CIFAR-100 32x32 colour, 100 classes (cifar-100-python/): pool train[40000:], normalised.

    The 100 fine labels; victim train[:40000]; the test split is the official 10,000 images;
    the model's first layer applies :data:`CIFAR100_NORMALIZATION`."""
    return _cifar("cifar100", data_dir, download)


def read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` in [0, 1] and labels 0..9 from an SVHN ``.mat`` file (``X``
    uint8 ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` with 10 standing for the digit 0)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    x = np.asarray(mat["X"], dtype=np.uint8)
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ValueError(f"{path.name}: X is {list(x.shape)}, expected [32, 32, 3, {len(y)}]")
    y = np.where(y == 10, 0, y)
    return uint8_images(x.transpose(3, 2, 0, 1)), torch.from_numpy(y)


@DATASETS.register("svhn")
def svhn(data_dir: Path, download: bool = False) -> DataSplits:
    """SVHN 32x32 colour digits (train_32x32.mat, test_32x32.mat): pool train[58606:], normalised.

    Victim train[:58606], the pool the last fifth of the 73,257 training images (the extra
    split is not used); the test split is the official 26,032; labels 0..9 (the files' 10 is
    0); the model's first layer applies :data:`SVHN_NORMALIZATION`."""
    from torchvision.datasets import SVHN

    if download:
        _download("SVHN", data_dir, lambda: SVHN(str(data_dir), split="train", download=True))
        _download("SVHN", data_dir, lambda: SVHN(str(data_dir), split="test", download=True))
    try:
        train_x, train_y = read_svhn(data_dir / SVHN.split_list["train"][1])
        test_x, test_y = read_svhn(data_dir / SVHN.split_list["test"][1])
    except (OSError, ValueError, KeyError) as exc:
        raise missing("SVHN", data_dir, _reason(exc)) from None
    victim_train, pool = tail_split(train_x, train_y, SVHN_POOL_SHARE)
    return DataSplits(
        name="svhn",
        victim_train=victim_train,
        attacker_pool=pool,
        test=Split(test_x, test_y),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        normalization=SVHN_NORMALIZATION,
    )
