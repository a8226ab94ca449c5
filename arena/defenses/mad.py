"""MAD — prediction poisoning by maximising angular deviation (Orekondy, Schiele and Fritz,
"Prediction Poisoning: Towards Defenses Against DNN Model Stealing Attacks", ICLR 2020).

A thief training on answer ``y`` moves its weights along ``a = G^T y``, with ``G`` the Jacobian of
its log-probabilities (stood in for by a surrogate). MAD returns a nearby ``y~`` whose gradient
``G^T y~`` points as far from ``a`` as possible. As in the paper, the maximiser is searched at
the simplex vertices: the class ``k`` whose gradient ``G^T e_k`` has the smallest cosine with
``a``; then a line search moves from ``y`` towards ``e_k`` as far as the budget allows,
``dist(y~, y) <= epsilon`` in L1, L2 or KL (``KL(y~ || y)``, nats). Every quantity is an inner
product of rows of ``G``, so only the per-query Gram matrix ``G G^T`` is computed (batched).

``argmax_preserving`` (the paper's MAD-argmax) also stops the line search before the top class
changes, so benign users keep their labels. The class-level ``preserves_argmax`` flag stays
False because it describes every setting of the defense; utility is measured either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Choice, FloatRange, ParamSpace, renormalise
from arena.defenses.registry import DEFENSES
from arena.defenses.surrogate import SurrogateGradientDefense
from arena.validation import check_bool, check_choice

NORMS = ("l1", "l2", "kl")
_ARGMAX_MARGIN = 1e-6
_BISECTION_STEPS = 50


@DEFENSES.register("mad")
@dataclass(frozen=True)
class MaximumAngularDeviation(SurrogateGradientDefense):
    """Moves each answer towards the vertex that turns the thief's gradient furthest away."""

    norm: str = "l1"
    """distance in which ``epsilon`` is measured: "l1", "l2" or "kl\""""
    argmax_preserving: bool = False
    """never change the top-1 class (MAD-argmax)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "epsilon": FloatRange(0.01, 2.0, log=True),
        "argmax_preserving": Choice((False, True)),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, NORMS)
        check_bool("argmax_preserving", self.argmax_preserving)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        if len(probs) == 0:
            return probs
        y = probs.to(torch.float64)
        gram = self.gram(x)
        target = most_deviating_vertex(gram, y)
        direction = torch.nn.functional.one_hot(target, y.shape[1]).to(y.dtype) - y
        step = self.largest_step(y, direction)
        if self.argmax_preserving:
            step = torch.minimum(step, argmax_keeping_step(y, target))
        return renormalise((y + step[:, None] * direction).to(probs.dtype))

    def largest_step(self, y: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Per row, the largest ``s`` in [0, 1] with ``dist(y + s * direction, y) <= epsilon``."""
        if self.norm in ("l1", "l2"):
            length: torch.Tensor = direction.norm(p=1 if self.norm == "l1" else 2, dim=1)
            return (self.epsilon / length.clamp_min(1e-30)).clamp(0.0, 1.0)
        low, high = torch.zeros(len(y), dtype=y.dtype), torch.ones(len(y), dtype=y.dtype)
        within = _kl(y + direction, y) <= self.epsilon
        for _ in range(_BISECTION_STEPS):  # KL(y + s d || y) grows with s: bisect on it
            middle = (low + high) / 2
            fits = _kl(y + middle[:, None] * direction, y) <= self.epsilon
            low, high = torch.where(fits, middle, low), torch.where(fits, high, middle)
        return torch.where(within, torch.ones_like(low), low)


def most_deviating_vertex(gram: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, the class ``k`` minimising the cosine between ``G^T e_k`` and ``G^T y``."""
    along = torch.einsum("bkj,bj->bk", gram, y)  # <G^T e_k, G^T y>
    vertex_norms = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(0.0).sqrt()
    answer_norm = (y * along).sum(dim=1, keepdim=True).clamp_min(0.0).sqrt()
    cosine = along / (vertex_norms * answer_norm).clamp_min(1e-30)
    return cosine.argmin(dim=1)


def argmax_keeping_step(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The largest step towards ``e_target`` that keeps the current top class on top: every other
    class shrinks by ``(1 - s)``, so only the target can overtake, at
    ``s = (y_top - y_target) / (1 + y_top - y_target)``."""
    top = y.max(dim=1).values
    gap = top - y.gather(1, target[:, None]).squeeze(1)
    keeps = ((gap - _ARGMAX_MARGIN) / (1.0 + gap)).clamp_min(0.0)
    same = target == y.argmax(dim=1)
    return torch.where(same, torch.ones_like(keeps), keeps)


def _kl(answer: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    answer = answer.clamp_min(0.0)
    ratio = answer / reference.clamp_min(1e-30)
    return torch.where(answer > 0, answer * ratio.clamp_min(1e-30).log(), 0.0).sum(dim=1)
