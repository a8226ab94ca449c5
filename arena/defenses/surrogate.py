"""The shared half of MAD and GRAD²: a surrogate of the thief's model and its per-query Gram.

Both defenses perturb an answer by reasoning about the gradient a thief would take from it. The
defender does not know the thief's model, so it stands in a surrogate: by default a randomly
initialised network of the victim's architecture (Orekondy et al. 2020 find a random surrogate
about as effective as a trained one), or the victim itself.

The surrogate's per-query Gram is nearly all of both defenses' cost. A cheaper architecture
(``surrogate_arch: mlp``) serves the default Fashion-MNIST victim at 1.6-1.7x the undefended
latency instead of 14-16x with the LeNet-5 default, and loses at most 0.3 points of protection
against the converged thieves (docs/benchmarks.md, "A cheap surrogate").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from arena.defenses.base import Defense
from arena.defenses.jacobians import per_sample_gram
from arena.defenses.preparation import PrepareContext
from arena.errors import ArenaError
from arena.models import resolve_architecture
from arena.validation import check_choice, check_integer, check_number

SURROGATES = ("random", "victim")


@dataclass(frozen=True)
class SurrogateGradientDefense(Defense):
    """Base for defenses that need the thief's per-query gradient geometry (not registered)."""

    epsilon: float = 0.5
    """perturbation budget: the largest allowed distance between the true and returned answer"""
    surrogate: str = "random"
    """"random": a freshly initialised surrogate of ``surrogate_arch``; "victim": the victim"""
    surrogate_arch: str | None = None
    """architecture of a random surrogate; ``None`` uses the victim's"""
    seed: int = 0
    """initialisation seed of a random surrogate"""

    def __post_init__(self) -> None:
        check_number("epsilon", self.epsilon, low=0, low_open=True)
        check_choice("surrogate", self.surrogate, SURROGATES)
        if self.surrogate_arch is not None:
            try:
                resolve_architecture(self.surrogate_arch)
            except ArenaError as exc:
                raise ValueError(f"surrogate_arch: {exc}") from None
        check_integer("seed", self.seed, low=0)

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        if self.surrogate == "victim":
            stand_in = copy.deepcopy(model)
        else:
            stand_in = context.new_model(self.surrogate_arch, self.seed)
        for parameter in stand_in.parameters():
            parameter.requires_grad_(False)
        self.models["surrogate"] = stand_in.eval()
        return model

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, C]`` inner products of the surrogate's per-class log-probability gradients,
        in float64 so the choices made from them do not depend on how a batch is split."""
        return per_sample_gram(self.models["surrogate"], x).to(torch.float64)
