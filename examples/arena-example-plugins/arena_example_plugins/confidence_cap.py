"""A defense that never answers more confidently than ``cap``: the surplus of an over-confident
top class is spread over the others, so the label stays and the thief learns less certainty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses import DEFENSES, Defense, FloatRange, ParamSpace
from arena.validation import check_number


@DEFENSES.register("confidence_cap", version=1)  # bump the version whenever answers change
@dataclass(frozen=True)
class ConfidenceCap(Defense):
    """Caps the top probability at `cap`, spreading the surplus over the other classes."""

    preserves_argmax = True  # cap > 1/2 keeps the capped class above every other one

    cap: float = 0.8
    """largest probability ever answered, in (0.5, 1]"""

    search_space: ClassVar[dict[str, ParamSpace]] = {"cap": FloatRange(0.55, 0.99)}

    def __post_init__(self) -> None:
        check_number("cap", self.cap, low=0.5, high=1, low_open=True)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        top, index = probs.max(dim=1, keepdim=True)
        over = top > self.cap
        others = probs.scatter(1, index, 0.0)
        mass = others.sum(dim=1, keepdim=True)
        uniform = torch.ones_like(probs).scatter(1, index, 0.0) / (probs.shape[1] - 1)
        spread = torch.where(mass > 1e-12, others / mass.clamp_min(1e-12), uniform)
        capped = (spread * (1.0 - self.cap)).scatter(1, index, self.cap)
        return torch.where(over, capped, probs)
