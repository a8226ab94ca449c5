"""What a match grants besides the victim: the attacker's query pool and the referee's test set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arena.data import DataSplits
from arena.knowledge import Knowledge
from arena.normalization import Normalization
from arena.pools import attacker_pool


@dataclass(frozen=True)
class MatchData:
    """The slices a match needs besides the victim: the attacker's pool and the test set."""

    pool: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    pool_labels: torch.Tensor | None = None
    """the pool's true labels, for the upper-bound baseline only"""
    pool_name: str = "in_distribution"
    normalization: Normalization | None = None
    """the victim dataset's declared normalisation, public like the input shape"""

    @classmethod
    def from_splits(
        cls, data: DataSplits, pool: str = "in_distribution", source: DataSplits | None = None
    ) -> MatchData:
        """``source``: for a ``dataset:NAME`` pool, that dataset's splits (:mod:`arena.pools`)."""
        granted = attacker_pool(data, pool, source)
        return cls(
            granted.images,
            data.test.x,
            data.test.y,
            data.input_shape,
            data.num_classes,
            granted.labels,
            pool,
            data.normalization,
        )

    def knowledge(self, substitute_arch: str, upper_bound: bool) -> Knowledge:
        """What the threat model grants a thief besides the oracle: this pool (its true labels
        only to an ``upper_bound`` baseline), the input shape, the classes, the substitute."""
        return Knowledge(
            pool=self.pool,
            pool_name=self.pool_name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            substitute_arch=substitute_arch,
            pool_labels=self.pool_labels if upper_bound else None,
            normalization=self.normalization,
        )
