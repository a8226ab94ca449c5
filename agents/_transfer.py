"""Shared body of transfer-set attacks: draw queries from the pool, label them through the oracle,
train the substitute. Subclasses only choose what the substitute learns from the answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.attacker import Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import TrainRecipe
from arena.validation import check_integer, check_number


@dataclass(frozen=True)
class TransferSetAttack(Attacker):
    """Random pool sampling plus substitute training; ``targets`` picks soft or hard labels."""

    epochs: int = 20
    """substitute training epochs over the transfer set"""
    lr: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 64
    """substitute training mini-batch"""
    query_batch: int = 256
    """images per oracle call"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "query_batch"):
            check_integer(name, getattr(self, name), low=1)
        check_number("lr", self.lr, low=0, high=10, low_open=True, high_open=True)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        """What the substitute is trained on: the answers themselves or labels derived from them."""
        raise NotImplementedError

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        queries, answers = query_random_subset(oracle, knowledge.pool, rng, self.query_batch)
        seed = torch_seed(rng)
        substitute = knowledge.make_substitute(seed)
        recipe = TrainRecipe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        return knowledge.fit(substitute, queries, self.targets(answers), recipe, seed=seed)


def query_random_subset(
    oracle: Oracle, pool: torch.Tensor, rng: np.random.Generator, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spend the whole remaining budget on pool images drawn uniformly without replacement.

    If the budget exceeds the pool, the pool is cycled in fresh random orders. If a detector
    makes the victim refuse, the attack keeps what it was answered so far.
    """
    n = oracle.remaining
    orders = [rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))]
    flat = np.concatenate(orders)[:n] if orders else np.empty(0, dtype=np.int64)
    indices = torch.from_numpy(flat)
    queries = pool[indices]
    answers = oracle.query_all(queries, batch_size=batch_size, until_refused=True)
    return queries[: len(answers)], answers
