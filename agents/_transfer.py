"""Shared body of transfer-set attacks: draw queries from the pool, label them through the oracle,
train the substitute. Subclasses only choose what the substitute learns from the answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents._thief_recipe import ThiefTraining
from arena.attacker import Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.validation import check_integer


@dataclass(frozen=True)
class TransferSetAttack(ThiefTraining, Attacker):
    """Random pool sampling plus substitute training; ``targets`` picks soft or hard labels."""

    query_batch: int = 256
    """images per oracle call"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_training()
        check_integer("query_batch", self.query_batch, low=1)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        """What the substitute is trained on: the answers themselves or labels derived from them."""
        raise NotImplementedError

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        queries, answers = query_random_subset(oracle, knowledge.pool, rng, self.query_batch)
        return self.fit_substitute(knowledge, queries, answers, torch_seed(rng), self.targets)


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
