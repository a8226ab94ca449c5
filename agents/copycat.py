"""Copycat CNN (Correia-Silva et al., IJCNN 2018): steal with hard labels only.

Query random pool images and train the substitute on the victim's top-1 labels, discarding any
probabilities the API returns — the attack for label-only APIs, and a countermeasure against
defenses that perturb probabilities but keep the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents._transfer import TransferSetAttack
from arena.attacker import ATTACKS


@ATTACKS.register("copycat", version=2)
@dataclass(frozen=True)
class Copycat(TransferSetAttack):
    """Copycat CNN: queries random pool images, trains on the returned top-1 labels only."""

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers.argmax(dim=1)
