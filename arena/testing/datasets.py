"""What every dataset loader promises (arena.data): three splits of float32 images in [0, 1]
shaped ``[N, C, H, W]`` with int64 labels below ``num_classes``, the test set apart from the
others, the same splits on every load."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from arena.data import NUM_CLASSES, DataSplits, Split, load_dataset
from arena.testing.core import Conformance, NotApplicable, expect

OVERLAP_LIMIT = 0.02
"""share of test images that may equal a training or pool image exactly (real datasets hold a
few duplicates; a split taken twice holds them all)"""
SPLITS = ("victim_train", "attacker_pool", "test")


def row_hashes(split: Split) -> set[int]:
    """One hash per image of the split."""
    flat = split.x.reshape(len(split), -1).contiguous()
    return {hash(row.numpy().tobytes()) for row in flat}


class DatasetConformance(Conformance):
    """One registered dataset, loaded from ``data_dir``, under test."""

    kind = "dataset"
    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "loads",
        "images",
        "labels",
        "num_classes",
        "disjoint_splits",
        "deterministic",
    )

    def __init__(self, name: str, data_dir: Path) -> None:
        super().__init__(name)
        self.data_dir = data_dir

    def data(self) -> DataSplits:
        return self.once("data", lambda: load_dataset(self.name, self.data_dir))

    def splits(self) -> list[tuple[str, Split]]:
        data = self.data()
        return [(name, getattr(data, name)) for name in SPLITS]

    def loads(self) -> None:
        """The loader returns DataSplits named after its registered name."""
        data = self.data()
        expect(isinstance(data, DataSplits), f"the loader returned {type(data).__name__}")
        expect(data.name == self.name, f"DataSplits.name is {data.name!r}, not {self.name!r}")

    def images(self) -> None:
        """Every split holds float32 images ``[N, C, H, W]`` in [0, 1], the same shape in all."""
        shape = self.data().input_shape
        for name, split in self.splits():
            x = split.x
            expect(x.dim() == 4, f"{name}: images are {tuple(x.shape)}, not [N, C, H, W]")
            expect(len(split) > 0, f"{name} is empty")
            expect(x.dtype == torch.float32, f"{name}: images are {x.dtype}, not float32")
            expect(tuple(x.shape[1:]) == shape, f"{name}: {tuple(x.shape[1:])} != test {shape}")
            low, high = float(x.min()), float(x.max())
            expect(low >= 0.0 and high <= 1.0, f"{name}: pixels span [{low}, {high}], not [0, 1]")

    def labels(self) -> None:
        """Every split has one int64 label per image, each in ``0..num_classes-1``."""
        classes = self.data().num_classes
        for name, split in self.splits():
            y = split.y
            expect(y.dtype == torch.int64, f"{name}: labels are {y.dtype}, not int64")
            expect(tuple(y.shape) == (len(split),), f"{name}: labels {tuple(y.shape)}")
            low, high = int(y.min()), int(y.max())
            expect(low >= 0 and high < classes, f"{name}: labels span {low}..{high}")

    def num_classes(self) -> None:
        """``num_classes`` matches the class names, the labels seen and arena.data.NUM_CLASSES
        (configs are checked against it before loading)."""
        data = self.data()
        expect(len(data.class_names) == data.num_classes, "one class name per class")
        seen = int(torch.unique(data.victim_train.y).numel())
        expect(seen == data.num_classes, f"the victim sees {seen} of {data.num_classes} classes")
        if self.name not in NUM_CLASSES:
            raise NotApplicable(f"add {self.name!r} to arena.data.NUM_CLASSES for config checks")
        declared = NUM_CLASSES[self.name]
        expect(declared == data.num_classes, f"NUM_CLASSES says {declared}")

    def disjoint_splits(self) -> None:
        """At most 2% of the test images also appear in the victim's training set or the
        attacker's pool."""
        data = self.data()
        test = row_hashes(data.test)
        for name in ("victim_train", "attacker_pool"):
            shared = len(test & row_hashes(getattr(data, name))) / max(len(test), 1)
            expect(shared <= OVERLAP_LIMIT, f"{shared:.1%} of test images are in {name}")
        pool = row_hashes(data.attacker_pool)
        shared = len(pool & row_hashes(data.victim_train)) / max(len(pool), 1)
        expect(shared <= OVERLAP_LIMIT, f"{shared:.1%} of the pool is in victim_train")

    def deterministic(self) -> None:
        """A second load gives the same splits in the same order (matches replay)."""
        again = load_dataset(self.name, self.data_dir)
        for name, split in self.splits():
            other: Split = getattr(again, name)
            same = torch.equal(split.x, other.x) and torch.equal(split.y, other.y)
            expect(same, f"{name} differs between two loads: shuffle with a fixed seed")


def check_dataset(name: str, data_dir: Path) -> None:
    """Raise ConformanceFailure unless the registered dataset ``name``, loaded from
    ``data_dir``, gives well-formed splits; call it from your own tests."""
    DatasetConformance(name, data_dir).check()
