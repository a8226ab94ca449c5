"""Label-only answers: the API returns just the predicted class (as a one-hot row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from arena.defenses.base import Defense, one_hot_argmax
from arena.defenses.registry import DEFENSES


@DEFENSES.register("label_only")
@dataclass(frozen=True)
class LabelOnly(Defense):
    """Returns only the top-1 label, as a one-hot probability row."""

    preserves_argmax = True
    answers_labels_only = True

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        return one_hot_argmax(probs)
