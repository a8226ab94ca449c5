"""Reverse sigmoid (Lee et al., "Defending against NN model stealing attacks using deceptive
perturbations", IEEE S&P Workshops 2019).

Each probability ``y`` is pushed against the direction a thief's sigmoid/softmax layer would need:
``r = beta * (sigmoid(gamma * logit(y)) - 1/2)`` and the answer is ``alpha * (y - r)``, clipped to
non-negative and rescaled (``alpha``) so each row sums to one. Large ``beta`` and small ``gamma``
perturb more; the top-1 label may change, so utility is measured, not assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, FloatRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES

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
        for name in ("beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value}")

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        clipped = probs.clamp(_CLIP, 1.0 - _CLIP)
        perturbation = self.beta * (torch.sigmoid(self.gamma * torch.logit(clipped)) - 0.5)
        return renormalise(probs - perturbation)
