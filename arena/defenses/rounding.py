"""Rounding (Tramèr et al. 2016): answer with probabilities rounded to a few decimals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, IntRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES
from arena.validation import check_integer


@DEFENSES.register("rounding")
@dataclass(frozen=True)
class Rounding(Defense):
    """Rounds each probability to `decimals` places, then renormalises rows to sum to one."""

    decimals: int = 2
    """decimal places kept (1 = coarsest useful setting)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {"decimals": IntRange(1, 4)}

    def __post_init__(self) -> None:
        check_integer("decimals", self.decimals, low=0, high=8)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        # Ties can move the argmax (two classes rounding to the same value), so no argmax flag.
        return renormalise(torch.round(probs, decimals=self.decimals))
