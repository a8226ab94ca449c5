"""What a threat model grants the attacker besides the oracle (DESIGN §1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.models import build_model


@dataclass(frozen=True)
class Knowledge:
    """The attacker's side information: never the victim, its weights, its data or test labels."""

    pool: torch.Tensor | None
    """unlabeled query pool ``[N, *input_shape]``; ``None`` for data-free attacks"""
    pool_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    substitute_arch: str
    pool_labels: torch.Tensor | None = None
    """the pool's true labels: granted only to the ``upper_bound`` baseline, never to a thief"""

    def make_substitute(self, seed: int) -> nn.Module:
        """A fresh, untrained model of the granted substitute architecture, seeded."""
        return build_model(self.substitute_arch, self.input_shape, self.num_classes, seed=seed)
