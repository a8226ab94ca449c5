"""Confidence cut-off: answers the victim is unsure of are withheld.

Rows whose top probability is below ``threshold`` carry the most information about the decision
boundary (that is where active-learning thieves such as ActiveThief's entropy strategy query), so
they are answered with less: ``mode="uniform"`` gives nothing at all (the uniform row, which also
costs utility on those rows), ``mode="label"`` gives only the top-1 label as a one-hot row.
Confident rows are answered unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Choice, Defense, FloatRange, ParamSpace, one_hot_argmax
from arena.defenses.registry import DEFENSES
from arena.validation import check_choice, check_number

MODES = ("uniform", "label")


@DEFENSES.register("high_confidence")
@dataclass(frozen=True)
class HighConfidence(Defense):
    """Withholds rows whose top probability is below a threshold (uniform row or label only)."""

    threshold: float = 0.9
    """answers whose top probability is below this are withheld (0 < threshold <= 1)"""
    mode: str = "label"
    """what a withheld row becomes: "uniform" (no information) or "label" (one-hot top-1)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "threshold": FloatRange(0.3, 1.0),
        "mode": Choice(MODES),
    }

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, low=0, high=1, low_open=True)
        check_choice("mode", self.mode, MODES)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        unsure = probs.max(dim=1, keepdim=True).values < self.threshold
        if self.mode == "label":
            withheld = one_hot_argmax(probs)
        else:
            withheld = torch.full_like(probs, 1.0 / probs.shape[1])
        return torch.where(unsure, withheld, probs)
