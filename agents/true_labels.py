"""Upper bound, not a threat model: the attacker's pool with its *true* labels.

The substitute trains on as many in-distribution pool images as the budget allows, labelled by
the dataset rather than the victim, and never queries the victim. No defense can touch it, so
it marks how far a thief with perfect labels would get; the leaderboard never counts it as a
defense's strongest adversary, and the record carries ``upper_bound: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from agents._transfer import TransferSetAttack
from arena.attacker import ATTACKS, MissingKnowledge
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed


@ATTACKS.register("true_labels", version=2)
@dataclass(frozen=True)
class TrueLabels(TransferSetAttack):
    """Upper bound (not a real threat model): the budget's worth of pool images, true labels."""

    upper_bound: ClassVar[bool] = True

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        if knowledge.pool_labels is None:
            raise MissingKnowledge("true_labels needs the pool's labels (in-distribution pool)")
        n = min(oracle.budget, len(knowledge.pool))
        chosen = torch.from_numpy(rng.permutation(len(knowledge.pool))[:n])
        x, y = knowledge.pool[chosen], knowledge.pool_labels[chosen]
        return self.fit_substitute(knowledge, x, y, torch_seed(rng), self.targets)
