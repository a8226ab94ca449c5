"""A two-phase pool thief: half the budget on random pool images, then the rest on the images
its first substitute is least sure about (smallest margin between its top two classes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.attacker import ATTACKS, Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import TrainRecipe, predict_probs
from arena.validation import check_integer, check_number


@ATTACKS.register("margin_thief", version=1)
@dataclass(frozen=True)
class MarginThief(Attacker):
    """Random pool images first, then the ones a first substitute finds closest to a boundary."""

    epochs: int = 10
    """substitute training epochs (each phase)"""
    lr: float = 3e-3
    """Adam learning rate"""
    batch_size: int = 32
    """substitute training mini-batch"""

    def __post_init__(self) -> None:
        super().__post_init__()  # validates the options every attack shares
        check_integer("epochs", self.epochs, low=1)
        check_integer("batch_size", self.batch_size, low=1)
        check_number("lr", self.lr, low=0, high=1, low_open=True)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None  # needs_pool: the base class checked it
        pool = knowledge.pool
        order = torch.from_numpy(rng.permutation(len(pool)))
        first = order[: min(oracle.remaining // 2, len(pool))]
        answers = oracle.query_all(pool[first], until_refused=True)
        asked = first[: len(answers)]
        substitute = self.fit(knowledge, pool[asked], answers, rng)
        rest = order[len(first) :]
        if oracle.remaining > 0 and len(rest) > 0 and len(answers) == len(first):
            top2 = predict_probs(substitute, pool[rest]).topk(2, dim=1).values
            unsure = rest[(top2[:, 0] - top2[:, 1]).argsort()[: oracle.remaining]]
            more = oracle.query_all(pool[unsure], until_refused=True)
            asked = torch.cat([asked, unsure[: len(more)]])
            answers = torch.cat([answers, more])
            substitute = self.fit(knowledge, pool[asked], answers, rng)
        return substitute

    def fit(
        self, knowledge: Knowledge, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> nn.Module:
        """A fresh substitute trained on the answers so far (the answers as soft targets)."""
        seed = torch_seed(rng)
        recipe = TrainRecipe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        # knowledge.fit trains where the match computes (a GPU when given one)
        return knowledge.fit(knowledge.make_substitute(seed), x, y, recipe, seed=seed)
