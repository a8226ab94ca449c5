"""Knockoff Nets, random strategy (Orekondy et al., CVPR 2019).

Sample the budget's worth of images uniformly from the attacker's pool, query the victim, and
train the substitute on the returned probability vectors (soft labels). Against a label-only
oracle the rows are one-hot and this degrades to training on labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents._transfer import TransferSetAttack
from arena.attacker import ATTACKS


@ATTACKS.register("knockoff")
@dataclass(frozen=True)
class Knockoff(TransferSetAttack):
    """Knockoff Nets (random): queries random pool images, trains on the returned probabilities."""

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers
