"""How a match names its query pool, as text: one of the built-in pools, or another dataset.

``in_distribution``, ``out_of_distribution`` and ``none`` are the built-in pools
(:mod:`arena.pools`). ``dataset:NAME`` grants the training split of another dataset (the
Knockoff setting: a CIFAR-100 pool against a CIFAR-10 victim), unlabeled. When its images do
not have the victim's shape, the mapping must be spelled out, never guessed:
``dataset:mnist?resize=bilinear&channels=repeat``. Configs may also write the mapping form
``{dataset: mnist, resize: bilinear, channels: repeat}``; both become the canonical text above
(options in that order), which is what match keys hash, so the built-in pools keep the keys
they always had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUILT_IN_POOLS = ("in_distribution", "out_of_distribution", "none")
DATASET_PREFIX = "dataset:"
RESIZE_MODES = ("nearest", "bilinear", "bicubic", "area")
"""``torch.nn.functional.interpolate`` modes a pool may be resized with"""
CHANNEL_MAPS = ("repeat", "luminance")
"""``repeat``: grey to RGB, the one channel copied; ``luminance``: RGB to grey, ITU-R 601 luma"""
TEXT_LIMIT = 500
"""longest pool text (a ``dataset:npz:PATH`` pool holds a path; pools reach keys and tags)"""
OPTIONS = {"resize": RESIZE_MODES, "channels": CHANNEL_MAPS}


@dataclass(frozen=True)
class DatasetPool:
    """Another dataset's training images as the pool, and how to map them to the victim's shape."""

    dataset: str
    resize: str | None = None
    channels: str | None = None

    def text(self) -> str:
        """The canonical text form: ``dataset:NAME`` and the options that are set, in order."""
        options = [f"{key}={getattr(self, key)}" for key in OPTIONS if getattr(self, key)]
        return DATASET_PREFIX + self.dataset + (f"?{'&'.join(options)}" if options else "")


def parse_pool(text: str) -> str | DatasetPool:
    """A built-in pool's name, or the dataset pool ``text`` names; ValueError saying the fix."""
    if text in BUILT_IN_POOLS:
        return text
    if len(text) > TEXT_LIMIT or not text.isprintable():
        raise ValueError(f"a pool is printable text of at most {TEXT_LIMIT} characters")
    if not text.startswith(DATASET_PREFIX):
        raise ValueError(
            f"unknown pool {text!r}; use one of {', '.join(BUILT_IN_POOLS)} or dataset:NAME"
        )
    dataset, _, query = text[len(DATASET_PREFIX) :].partition("?")
    if not dataset:
        raise ValueError("a dataset pool names its dataset: dataset:NAME (e.g. dataset:cifar100)")
    options: dict[str, str] = {}
    for option in query.split("&") if query else []:
        key, _, value = option.partition("=")
        if key not in OPTIONS:
            raise ValueError(f"pool option {key!r} is unknown; known: {', '.join(OPTIONS)}")
        if key in options:
            raise ValueError(f"pool option {key!r} is given twice; give it once")
        if value not in OPTIONS[key]:
            raise ValueError(f"pool {key}={value!r}; use one of {', '.join(OPTIONS[key])}")
        options[key] = value
    return DatasetPool(dataset, **options)


def pool_dataset(pool: str) -> str | None:
    """The dataset a ``dataset:NAME`` pool draws from (to be loaded beside the victim's), or
    None for the built-in pools."""
    chosen = parse_pool(pool)
    return chosen.dataset if isinstance(chosen, DatasetPool) else None


def pool_text(value: Any) -> Any:
    """A pool as a config writes it (text or ``{dataset, resize, channels}``) as canonical text;
    other values are left for validation to reject."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"dataset", *OPTIONS})
        if unknown or not isinstance(value.get("dataset"), str):
            raise ValueError(
                "a dataset pool is {dataset: NAME, resize: MODE, channels: MAP}"
                + (f"; unknown keys {unknown}" if unknown else "")
            )
        query = "&".join(f"{k}={value[k]}" for k in OPTIONS if value.get(k) is not None)
        value = DATASET_PREFIX + value["dataset"] + (f"?{query}" if query else "")
    if not isinstance(value, str):
        return value
    parsed = parse_pool(value)
    return parsed.text() if isinstance(parsed, DatasetPool) else parsed
