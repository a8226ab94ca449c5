"""A user's own data, named by a form instead of a registered name.

- ``imagefolder:PATH``: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` image files
  (PNG, JPEG, ... read by PIL through torchvision's ImageFolder), class indices by sorted
  folder name as ImageFolder assigns them. The attacker pool is ``PATH/pool/<class>/*`` when
  that folder exists, else every fifth training image. All images share one size; they are
  grey (1 channel) when every file is grey, else RGB (3 channels).
- ``npz:PATH``: a NumPy ``.npz`` with ``x_train, y_train, x_test, y_test`` and optionally
  ``x_pool, y_pool``; images uint8 (0..255) or float in [0, 1], shaped ``[N, H, W]``,
  ``[N, H, W, C]`` or ``[N, C, H, W]`` with C 1 or 3; labels integers 0..C-1, the classes
  being those of ``y_train``. Without ``x_pool`` the pool is every fifth training image.

A relative PATH is relative to the working directory. Neither form declares a normalisation.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.data import DATASET_FORMS, DataSplits, Split
from arena.errors import DatasetMissing, InvalidDataset, one_line

POOL_EVERY = 5
"""without a pool of its own, the training images at positions 4, 9, 14, ... (every fifth, in
file order, so every class gives some) are the attacker pool and the rest the victim's"""
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
"""PIL modes read as one grey channel"""
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def form_path(name: str) -> Path:
    """The path of a form such as ``npz:~/data/x.npz``."""
    return Path(name.partition(":")[2]).expanduser()


def user_splits(name: str, splits: dict[str, Split], class_names: tuple[str, ...]) -> DataSplits:
    """A user's dataset from its ``train``, ``test`` and optional ``pool`` parts; without a pool
    of its own, every fifth training image is the pool (:func:`every_fifth`)."""
    if "pool" in splits:
        victim_train, pool = splits["train"], splits["pool"]
    else:
        victim_train, pool = every_fifth(splits["train"].x, splits["train"].y, name)
    return DataSplits(
        name=name,
        victim_train=victim_train,
        attacker_pool=pool,
        test=splits["test"],
        num_classes=len(class_names),
        class_names=class_names,
    )


def every_fifth(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[Split, Split]:
    """The victim's training images and the pool, split as :data:`POOL_EVERY` says."""
    if len(y) < POOL_EVERY:
        raise InvalidDataset(
            f"{name}: {len(y)} training images; give at least {POOL_EVERY} (every fifth is the "
            "attacker pool) or a pool of its own"
        )
    pool = torch.arange(len(y)) % POOL_EVERY == POOL_EVERY - 1
    return Split(x[~pool], y[~pool]), Split(x[pool], y[pool])


# ---- imagefolder:PATH -------------------------------------------------------------------------


def _open_image(path: str) -> Any:
    """The file as PIL reads it (ImageFolder's own loader would force RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


def _read_folder(folder: Path, name: str) -> tuple[list[Any], list[str], list[str]]:
    """Every image under ``folder/<class>/``, with its class name and file path."""
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(folder), loader=_open_image)
    except (FileNotFoundError, OSError) as exc:
        raise DatasetMissing(
            f"{name}: no images in {folder} ({one_line(str(exc), 160)}); put them in "
            f"{folder}/<class>/*.png"
        ) from None
    images, classes, paths = [], [], []
    for index, (path, label) in enumerate(found.samples):
        try:
            images.append(found[index][0])
        except OSError as exc:
            raise InvalidDataset(
                f"{name}: cannot read {path} ({type(exc).__name__}); remove or replace it"
            ) from None
        classes.append(found.classes[label])
        paths.append(path)
    return images, classes, paths


def _stack(images: list[Any], paths: list[str], mode: str, first: tuple[str, Any]) -> torch.Tensor:
    """PIL images as ``[N, C, H, W]`` float32 in [0, 1]; each must have the size of ``first``
    (the dataset's first image: its path and the image)."""
    size = first[1].size
    arrays = []
    for image, path in zip(images, paths, strict=True):
        if image.size != size:
            raise InvalidDataset(
                f"{path} is {image.size[0]}x{image.size[1]} but {first[0]} is "
                f"{size[0]}x{size[1]}; resize all images of the dataset to one size"
            )
        array = np.asarray(image.convert(mode), dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)).to(torch.float32).div(255.0)


@DATASET_FORMS.register("imagefolder")
def imagefolder(name: str) -> DataSplits:
    """imagefolder:PATH: PATH/{train,test}/<class>/*.png; pool PATH/pool/ or every 5th image.

    See the module docstring for the channels, the sizes and the class indices."""
    root = form_path(name)
    folders = {"train": root / "train", "test": root / "test", "pool": root / "pool"}
    for part in ("train", "test"):
        if not folders[part].is_dir():
            raise DatasetMissing(
                f"{name}: no folder {folders[part]}; put the {part} images in "
                f"{folders[part]}/<class>/*.png"
            )
    read = {part: _read_folder(path, name) for part, path in folders.items() if path.is_dir()}
    class_names = tuple(sorted(set(read["train"][1])))
    index = {c: i for i, c in enumerate(class_names)}
    grey = all(image.mode in GREY_MODES for images, _, _ in read.values() for image in images)
    first = (read["train"][2][0], read["train"][0][0])
    splits = {}
    for part, (images, classes, paths) in read.items():
        if unknown := sorted(set(classes) - set(class_names)):
            raise InvalidDataset(
                f"{name}: {folders[part]} has class folders {unknown} that {folders['train']} "
                "lacks; give every class training images"
            )
        x = _stack(images, paths, "L" if grey else "RGB", first)
        splits[part] = Split(x, torch.tensor([index[c] for c in classes], dtype=torch.int64))
    return user_splits(name, splits, class_names)


# ---- npz:PATH ---------------------------------------------------------------------------------


def _npz_images(name: str, key: str, array: np.ndarray[Any, Any]) -> torch.Tensor:
    """One image array as ``[N, C, H, W]`` float32 in [0, 1], or a one-line error saying why not."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[3] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and array.shape[1] in (1, 3)):
        raise InvalidDataset(
            f"{name}: {key} is {list(array.shape)}; store images as [N, H, W], [N, H, W, C] or "
            "[N, C, H, W] with C 1 or 3"
        )
    if len(array) == 0:
        raise InvalidDataset(f"{name}: {key} holds no images; give it at least one")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div(255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidDataset(
            f"{name}: {key} is {array.dtype}; store images as uint8 (0..255) or float in [0, 1]"
        )
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 1.0):  # NaN fails both comparisons
        raise InvalidDataset(
            f"{name}: {key} holds values in [{low:g}, {high:g}]; scale float images to [0, 1] "
            "or store them as uint8"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _npz_labels(name: str, key: str, array: np.ndarray[Any, Any], count: int) -> torch.Tensor:
    """One label array as int64 ``[N]``: integers, one per image, none negative."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InvalidDataset(
            f"{name}: {key} is {array.dtype} {list(array.shape)}; store one integer class "
            "index per image, shaped [N]"
        )
    if len(array) != count:
        raise InvalidDataset(
            f"{name}: {key} has {len(array)} labels for {count} images; give one per image"
        )
    if array.min() < 0:
        raise InvalidDataset(f"{name}: {key} has the label {int(array.min())}; use 0..C-1")
    return torch.from_numpy(array.astype(np.int64))


def _npz_arrays(name: str, path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """The archive's arrays (never unpickling objects), the four required ones checked."""
    if not path.is_file():
        raise DatasetMissing(
            f"{name}: no file {path}; write one with numpy.savez({str(path)!r}, x_train=..., "
            "y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidDataset(
            f"{name}: not a readable .npz of plain arrays ({type(exc).__name__}); write it with "
            "numpy.savez from numeric arrays"
        ) from None
    if missing := [key for key in NPZ_KEYS if key not in arrays]:
        raise InvalidDataset(
            f"{name}: no {', '.join(missing)} in {path} (it holds "
            f"{', '.join(arrays) or 'nothing'}); save x_train, y_train, x_test, y_test"
        )
    if ("x_pool" in arrays) != ("y_pool" in arrays):
        raise InvalidDataset(f"{name}: x_pool and y_pool come together; save both or neither")
    return arrays


@DATASET_FORMS.register("npz")
def npz(name: str) -> DataSplits:
    """npz:PATH: x_train, y_train, x_test, y_test (+ x_pool, y_pool); pool else every 5th image.

    Images uint8 or float in [0, 1]; see the module docstring for the accepted shapes."""
    arrays = _npz_arrays(name, form_path(name))
    splits = {}
    for part in ("train", "test", "pool"):
        if f"x_{part}" not in arrays:
            continue
        x = _npz_images(name, f"x_{part}", arrays[f"x_{part}"])
        y = _npz_labels(name, f"y_{part}", arrays[f"y_{part}"], len(x))
        splits[part] = Split(x, y)
    shapes = {part: tuple(split.x.shape[1:]) for part, split in splits.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"x_{part} {list(shape)}" for part, shape in shapes.items())
        raise InvalidDataset(f"{name}: images differ in shape ({shown}); give all one [C, H, W]")
    num_classes = int(splits["train"].y.max()) + 1
    for part, split in splits.items():
        if int(split.y.max()) >= num_classes:
            raise InvalidDataset(
                f"{name}: y_{part} has the label {int(split.y.max())} but y_train only "
                f"0..{num_classes - 1}; every class needs training images"
            )
    return user_splits(name, splits, tuple(str(i) for i in range(num_classes)))
