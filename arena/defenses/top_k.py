"""Top-k answers (Orekondy et al. 2019 and Tramèr et al. 2016 evaluate truncated outputs): only the
``k`` largest probabilities are returned, renormalised; the rest read as zero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, IntRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES
from arena.validation import check_integer


@DEFENSES.register("top_k")
@dataclass(frozen=True)
class TopK(Defense):
    """Keeps the k largest probabilities of each row, renormalised; the others become zero."""

    preserves_argmax = True

    k: int = 1
    """probabilities kept per row (1 <= k <= number of classes)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {"k": IntRange(1, 5)}

    def __post_init__(self) -> None:
        check_integer("k", self.k, low=1)

    def check_task(self, num_classes: int) -> None:
        if self.k > num_classes:
            raise ValueError(f"k must be in 1..{num_classes} (the number of classes), got {self.k}")

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        k = min(self.k, probs.shape[1])
        top = probs.topk(k, dim=1)
        kept = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
        return renormalise(kept)
