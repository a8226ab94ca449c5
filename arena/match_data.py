"""What a match grants besides the victim: the attacker's query pool and the referee's test set
(and, for a ``data_access`` threat model only, the victim's training split)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arena.data import DataSplits, Split
from arena.knowledge import API, DATA_ACCESS, Knowledge
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
    victim_train: Split | None = None
    """the victim's training split, carried only for a match whose attack plays the
    ``data_access`` threat model (it stays out of every other match's data)"""

    @classmethod
    def from_splits(
        cls,
        data: DataSplits,
        pool: str = "in_distribution",
        source: DataSplits | None = None,
        threat_model: str = API,
    ) -> MatchData:
        """``source``: for a ``dataset:NAME`` pool, that dataset's splits (:mod:`arena.pools`);
        ``threat_model``: the attack's (the victim's training split comes along for
        ``data_access`` only)."""
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
            data.victim_train if threat_model == DATA_ACCESS else None,
        )

    def knowledge(
        self, substitute_arch: str, upper_bound: bool, threat_model: str = API
    ) -> Knowledge:
        """What the threat model grants a thief besides the oracle: this pool (its true labels
        only to an ``upper_bound`` baseline), the input shape, the classes, the substitute, and
        the victim's training split to a ``data_access`` threat model only (the victim's copy,
        for ``model_access``, comes from the service: :func:`arena.referee.referee_match`)."""
        return Knowledge(
            pool=self.pool,
            pool_name=self.pool_name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            substitute_arch=substitute_arch,
            pool_labels=self.pool_labels if upper_bound else None,
            normalization=self.normalization,
            victim_train=self.victim_train if threat_model == DATA_ACCESS else None,
        )
