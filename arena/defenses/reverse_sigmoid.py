"""Reverse sigmoid (Lee et al., "Defending against NN model stealing attacks using deceptive
perturbations", IEEE S&P Workshops 2019).

Each probability ``y`` is pushed against the direction a thief's sigmoid/softmax layer would need:
``r = beta * (sigmoid(gamma * logit(y)) - 1/2)`` and the answer is ``alpha * (y - r)``, clipped to
non-negative and rescaled (``alpha``) so each row sums to one. Large ``beta`` and small ``gamma``
perturb more; the top-1 label may change, so utility is measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, FloatRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES
from arena.validation import check_number

_CLIP = 1e-9


@DEFENSES.register("reverse_sigmoid")
@dataclass(frozen=True)
class ReverseSigmoid(Defense):
    """Deceptive perturbation y - beta*(sigmoid(gamma*logit(y)) - 1/2), renormalised (Lee 2019)."""

    beta: float = 1.0
    """perturbation magnitude (> 0)"""
    gamma: float = 0.1
    """convergence parameter (> 0); smaller flattens the inverse sigmoid more"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "beta": FloatRange(0.05, 2.0, log=True),
        "gamma": FloatRange(0.01, 1.0, log=True),
    }

    def __post_init__(self) -> None:
        check_number("beta", self.beta, low=0, low_open=True)
        check_number("gamma", self.gamma, low=0, low_open=True)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        clipped = probs.clamp(_CLIP, 1.0 - _CLIP)
        perturbation = self.beta * (torch.sigmoid(self.gamma * torch.logit(clipped)) - 0.5)
        return renormalise(probs - perturbation)
