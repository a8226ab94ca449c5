"""The attacker-agent contract (DESIGN §3): hyperparameters only; the oracle comes at call time.

The contract and the :data:`ATTACKS` registry live in the arena so the referee can build attackers
by name; the attacks themselves live in the ``agents`` package and register when it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from arena.errors import ArenaError
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.registry import Registry


class MissingKnowledge(ArenaError):
    """The threat model does not grant what this attack needs (e.g. a query pool)."""


@dataclass(frozen=True)
class Attacker:
    """Base class. ``steal`` checks the threat model, then runs the attack body ``_steal``."""

    needs_pool: ClassVar[bool] = True
    """True when the attack samples its queries from ``knowledge.pool``."""

    def steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        """Spend (some of) the oracle's budget and return a substitute model in eval mode."""
        if self.needs_pool and knowledge.pool is None:
            name = type(self).__name__
            raise MissingKnowledge(f"{name} needs a query pool; the threat model grants none")
        model = self._steal(oracle, knowledge, rng)
        return model.eval()

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        raise NotImplementedError


ATTACKS: Registry[type[Attacker]] = Registry("attack")
"""Filled by importing ``agents``."""
