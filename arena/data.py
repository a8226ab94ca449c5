"""Datasets and the benchmark splits: victim training set, disjoint attacker pool, test set.

Images are float32 in [0, 1], shaped ``[N, C, H, W]``; labels are int64.
Fashion-MNIST comes from (in order) an unpacked copy under the data dir, the Debian package
``dataset-fashion-mnist``, or a torchvision download. The other torchvision datasets
(:mod:`arena.torchvision_data`) are read from torchvision's layout under the data dir and
downloaded only when asked (``download: true``). A user's own data is named by a form,
``imagefolder:PATH`` or ``npz:PATH`` (:mod:`arena.user_data`).
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

from arena.errors import DatasetMissing, UnknownPlugin, first_unprintable
from arena.home import ArenaHome
from arena.normalization import Normalization
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
    normalization: Normalization | None = None
    """per-channel ``(mean, std)`` the models apply as their first layer
    (:func:`arena.normalization.normalized`); ``None``: inputs are used as they are"""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.test.x.shape[1:])


DatasetLoader = Callable[[Path, bool], DataSplits]
"""``(data_dir, download) -> DataSplits``; ``download``: fetch missing files (the user asked)"""
DATASETS: Registry[DatasetLoader] = Registry("dataset")
DatasetForm = Callable[[str], DataSplits]
"""the loader of a form ``PREFIX:PATH``, given the whole name (it names the data it returns)"""
DATASET_FORMS: Registry[DatasetForm] = Registry("dataset form")
"""``imagefolder:PATH``, ``npz:PATH``: a user's own data, named by its path"""
NUM_CLASSES: dict[str, int] = {
    "fashion_mnist": 10,
    "digits": 10,
    "mnist": 10,
    "kmnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
}
"""classes per registered dataset, known without loading it (configs are checked against it)"""
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "fashion_mnist": (1, 28, 28),
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "kmnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}
"""image shape per registered dataset, known without loading it: pool mappings and a victim's
checkpoint are checked against it with the config (a dataset missing here is checked once loaded)"""


def default_data_dir() -> Path:
    """``ARENA_DATA_DIR`` if set, else ``<ARENA_HOME>/data`` (for callers without a home)."""
    return ArenaHome.from_environment().data_dir


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> DataSplits:
    """Load a registered dataset (or a form such as ``npz:PATH``) and its splits; raises
    DatasetMissing with the fix. Only ``download=True`` fetches missing files."""
    if (form := dataset_form(name)) is not None:
        return DATASET_FORMS.get(form)(name)
    loader = DATASETS.get(name)
    return loader(data_dir or default_data_dir(), download)


FORM_LIMIT = 400
"""longest dataset form, ``npz:PATH`` included: names reach match keys, tags and terminals"""


def dataset_form(name: str) -> str | None:
    """The form prefix of ``name`` (``npz`` for ``npz:/data/x.npz``), or None for a plain
    name; a known prefix with an empty, overlong or unprintable path is an unknown dataset."""
    prefix, colon, path = name.partition(":")
    if not colon or prefix not in DATASET_FORMS:
        return None
    if not path.strip() or len(name) > FORM_LIMIT or first_unprintable(name) is not None:
        raise UnknownPlugin("dataset", name, DATASETS.names())
    return prefix


def is_dataset(name: str) -> bool:
    """Whether ``name`` is a registered dataset or a well-formed form (its files are not read)."""
    try:
        return name in DATASETS or dataset_form(name) is not None
    except UnknownPlugin:
        return False


def tail_split(x: torch.Tensor, y: torch.Tensor, share: int) -> tuple[Split, Split]:
    """An official train split cut into the victim's part and the attacker pool: the last
    ``1/share`` of the images (rounded down) is the pool, the rest the victim's; deterministic
    and disjoint, and the same rule for a full download and a smaller copy."""
    cut = len(y) - len(y) // share
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


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


MNIST_POOL_SHARE = 6
"""the MNIST family's pool: the last sixth of the 60,000 training images, ``train[50000:]``"""


def _to_float_images(images: torch.Tensor) -> torch.Tensor:
    return (images.to(torch.float32) / 255.0).unsqueeze(1).contiguous()


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: Path, download: bool = False) -> DataSplits:
    """Fashion-MNIST 28x28 grey clothes, 10 classes: victim train[:50000], pool train[50000:].

    Downloaded when neither FashionMNIST/raw nor the Debian package has it, whatever
    ``download`` says (its behaviour from before the switch existed)."""
    from torchvision.datasets import FashionMNIST

    raw = data_dir / "FashionMNIST" / "raw"
    have_raw = all((raw / f).is_file() for f in FASHION_MNIST_FILES)
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
    victim_train, pool = tail_split(train_x, train_y, MNIST_POOL_SHARE)
    return DataSplits(
        name="fashion_mnist",
        victim_train=victim_train,
        attacker_pool=pool,
        test=Split(_to_float_images(test.data), test.targets.to(torch.int64)),
        num_classes=10,
        class_names=tuple(train.classes),
    )


@DATASETS.register("digits")
def digits(data_dir: Path, download: bool = False) -> DataSplits:
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


# The other loaders register themselves with the registries above (imported last: they use them).
from arena import torchvision_data, user_data  # noqa: E402, F401
