"""Tiny datasets written in each real on-disk format (torchvision's layouts, PNG folders, .npz),
for the loaders to read back exactly as they read the real files."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``n`` distinct random uint8 images (distinct so split disjointness is checkable)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n, dtype=np.uint8)  # no two alike
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): magic 0x08 (uint8) and the rank, big-endian sizes, bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(data_dir: Path, folder: str, train: int, test: int) -> dict[str, np.ndarray]:
    """``data_dir/<folder>/raw`` as torchvision's MNIST and KMNIST classes read it."""
    raw = data_dir / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = pixels(n, (28, 28), seed), np.arange(n, dtype=np.uint8) % 10
        write_idx(raw / MNIST_FILES[split][0], images)
        write_idx(raw / MNIST_FILES[split][1], labels)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    return arrays


def _pickle(path: Path, entry: dict[str, object]) -> None:
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(data_dir: Path, per_batch: int, test: int) -> dict[str, np.ndarray]:
    """``data_dir/cifar-10-batches-py``: five pickled training batches, the test batch and
    batches.meta, each ``data`` uint8 ``[n, 3072]`` (the red plane, then green, then blue)."""
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x = pixels(5 * per_batch, (3072,), 3)
    train_y = np.arange(5 * per_batch) % 10
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        entry = {"data": train_x[rows], "labels": train_y[rows].tolist()}
        _pickle(folder / f"data_batch_{b + 1}", {"batch_label": f"batch {b + 1}", **entry})
    test_x, test_y = pixels(test, (3072,), 4), np.arange(test) % 10
    _pickle(folder / "test_batch", {"data": test_x, "labels": test_y.tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return {"x_train": train_x, "y_train": train_y, "x_test": test_x, "y_test": test_y}


def write_cifar100(data_dir: Path, train: int, test: int) -> dict[str, np.ndarray]:
    """``data_dir/cifar-100-python``: the pickled train and test sets and meta, fine labels."""
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n, seed in (("train", train, 5), ("test", test, 6)):
        x, y = pixels(n, (3072,), seed), (np.arange(n) * 7) % 100
        entry = {"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
        _pickle(folder / split, entry)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    _pickle(folder / "meta", meta)
    return arrays


def write_svhn(data_dir: Path, train: int, test: int) -> dict[str, np.ndarray]:
    """``data_dir/train_32x32.mat`` and ``test_32x32.mat``: ``X`` uint8 ``[32, 32, 3, N]``,
    ``y`` ``[N, 1]`` with 10 for the digit 0, as the official files hold them."""
    from scipy.io import savemat

    data_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, seed in (("train", train, 7), ("test", test, 8)):
        x = pixels(n, (32, 32, 3), seed).transpose(1, 2, 3, 0)  # [32, 32, 3, N]
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10
        savemat(str(data_dir / f"{split}_32x32.mat"), {"X": x, "y": y})
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    """One PNG: ``[H, W]`` grey or ``[H, W, 3]`` RGB, uint8."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
