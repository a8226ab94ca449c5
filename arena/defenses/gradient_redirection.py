"""GRAD² — gradient redirection (Mazeika, Li and Forsyth, "How to Steer Your Adversary: Targeted
and Efficient Model Stealing Defenses with Gradient Redirection", ICML 2022).

Where MAD pushes the thief's gradient anywhere away from the truthful one, GRAD² steers it to a
chosen target direction; the untargeted defense aims at the reverse of the truthful gradient,
``-G^T y``. The objective ``<G^T y~, -G^T y> = -y~^T (G G^T) y`` is linear in the answer, so under
an L1 budget ``||y~ - y||_1 <= epsilon`` on the simplex the optimum is greedy and exact: move
``epsilon / 2`` of probability mass from the classes with the lowest score to the one with the
highest. The per-query Gram matrix ``G G^T`` comes from the same batched surrogate Jacobians as
MAD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import FloatRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES
from arena.defenses.surrogate import SurrogateGradientDefense


@DEFENSES.register("gradient_redirection")
@dataclass(frozen=True)
class GradientRedirection(SurrogateGradientDefense):
    """Moves an L1 budget of mass so the thief's gradient points against the truthful one."""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "epsilon": FloatRange(0.01, 2.0, log=True),
    }

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        if len(probs) == 0:
            return probs
        y = probs.to(torch.float64)
        score = -torch.einsum("bkj,bj->bk", self.gram(x), y)  # <G^T e_k, -G^T y>
        return renormalise(move_mass_greedily(y, score, self.epsilon / 2).to(probs.dtype))


def move_mass_greedily(y: torch.Tensor, score: torch.Tensor, mass: float) -> torch.Tensor:
    """Maximise ``score . y~`` over the simplex with ``||y~ - y||_1 <= 2 * mass``: take up to
    ``mass`` from the lowest-scoring classes first and give it to the highest-scoring one."""
    receiver = score.argmax(dim=1, keepdim=True)
    donors = y.scatter(1, receiver, 0.0)
    order = score.argsort(dim=1)  # lowest score gives first
    available = donors.gather(1, order)
    taken_before = available.cumsum(dim=1) - available
    taken = (mass - taken_before).clamp_min(0.0).minimum(available)
    given = torch.zeros_like(y).scatter(1, order, taken)
    moved = given.sum(dim=1, keepdim=True)
    return (y - given).scatter_add(1, receiver, moved)
