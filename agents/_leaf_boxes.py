"""Leaf boxes for the path-finding attack: the predicates found on a leaf's path, and the stolen
model that predicts with the box an input falls in.

A decision tree's leaf is reached by a conjunction of axis-aligned predicates ``x_f <= t`` and
``x_f > t``, so its region is a box. :class:`Bound` is one such predicate as the attack measured
it: two values of the feature, one answered inside the leaf and one outside, at most the attack's
tolerance apart. :class:`BoxLookup` is the substitute: it answers with the leaf whose box is
nearest to the input (distance 0 inside it), and with the nearest answered point for leaves the
attack saw but could not explore before its budget ran out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.trees import device_anchor

LOWER = -1
"""a lower bound: the leaf holds ``x_f > t``"""
UPPER = 1
"""an upper bound: the leaf holds ``x_f <= t``"""

SMALLEST_ANSWER = 1e-9
"""answers are clamped to this before their logarithm, so zeros give finite logits"""


@dataclass(frozen=True)
class Bound:
    """One predicate on a leaf's path, bracketed by two answered values of one feature."""

    feature: int
    """index into the flattened input"""
    side: int
    """:data:`LOWER` or :data:`UPPER`"""
    inside: float
    """a value of the feature answered inside the leaf"""
    outside: float
    """the nearest value answered outside it, beyond ``inside``"""

    @property
    def threshold(self) -> float:
        """The estimate of the tree's threshold: the middle of the bracket."""
        return (self.inside + self.outside) / 2

    def flipped(self) -> Bound:
        """The same predicate seen from the leaf on its other side."""
        return Bound(self.feature, -self.side, self.outside, self.inside)


@dataclass(frozen=True)
class Leaf:
    """A leaf the attack found: its answer, one input reaching it and, if explored, its box."""

    answer: np.ndarray
    """the victim's answer row (the leaf's identity)"""
    witness: np.ndarray
    """a flattened input answered with ``answer``"""
    bounds: tuple[Bound, ...] | None
    """the predicates of its path; ``None`` when the budget ran out before it was explored"""

    @property
    def key(self) -> bytes:
        return answer_key(self.answer)


def answer_key(answer: np.ndarray) -> bytes:
    """The identity of an answer row: its exact float32 bytes."""
    return np.ascontiguousarray(answer, dtype=np.float32).tobytes()


def box_limits(bounds: Sequence[Bound], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(low, high)`` limits of a box: ``low < x <= high`` per feature, ``±inf`` if free."""
    low = np.full(dim, -np.inf)
    high = np.full(dim, np.inf)
    for bound in bounds:
        if bound.side == LOWER:
            low[bound.feature] = max(low[bound.feature], bound.threshold)
        else:
            high[bound.feature] = min(high[bound.feature], bound.threshold)
    return low, high


class BoxIndex:
    """The explored boxes grouped by answer key, to ask which of them cover given points."""

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self._limits: dict[bytes, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, key: bytes, bounds: Sequence[Bound]) -> None:
        self._limits.setdefault(key, []).append(box_limits(bounds, self._dim))

    def covered(self, key: bytes, points: np.ndarray, margin: float) -> np.ndarray:
        """Which rows of ``points`` ``[m, d]`` lie, within ``margin`` per feature, in a box of
        ``key``."""
        hit = np.zeros(len(points), dtype=bool)
        for low, high in self._limits.get(key, ()):
            hit |= ((points > low - margin) & (points <= high + margin)).all(axis=1)
        return hit


class BoxLookup(nn.Module):
    """The stolen tree: each input gets the answer of the nearest explored box (0 inside it) or,
    nearer still, of an answered point of an unexplored leaf; logits are the answer's logs.

    A box's distance is the L1 norm of how far the input violates its bounds; a point's is the L1
    distance; ties go to the first box, boxes of answers explored more than once (colliding
    leaves) last. Bounds are held sparsely (one row per predicate), so the cost is inputs ×
    bounds.
    """

    bound_box: torch.Tensor
    bound_feature: torch.Tensor
    bound_threshold: torch.Tensor
    bound_sign: torch.Tensor
    points: torch.Tensor
    log_answers: torch.Tensor

    def __init__(self, leaves: Sequence[Leaf], dim: int, num_classes: int) -> None:
        super().__init__()
        boxes = [leaf for leaf in leaves if leaf.bounds is not None]
        # An answer explored as several boxes belongs to colliding leaves, whose boxes may
        # overlap other leaves (see agents.path_finding); ties go to the earliest box, so
        # those boxes go last and a point inside an unambiguous box gets that box's answer.
        explored = Counter(leaf.key for leaf in boxes)
        boxes.sort(key=lambda leaf: explored[leaf.key] > 1)
        points = [leaf for leaf in leaves if leaf.bounds is None]
        rows = [(i, b) for i, leaf in enumerate(boxes) for b in leaf.bounds or ()]
        self.num_boxes = len(boxes)
        self.num_classes = num_classes
        self.register_buffer("bound_box", torch.tensor([i for i, _ in rows], dtype=torch.int64))
        self.register_buffer(
            "bound_feature", torch.tensor([b.feature for _, b in rows], dtype=torch.int64)
        )
        self.register_buffer(
            "bound_threshold", torch.tensor([b.threshold for _, b in rows], dtype=torch.float64)
        )
        # violation = relu(sign * (x - t)): x above an upper bound, or below a lower one
        self.register_buffer(
            "bound_sign", torch.tensor([float(b.side) for _, b in rows], dtype=torch.float64)
        )
        witnesses = np.stack([p.witness for p in points]) if points else np.zeros((0, dim))
        self.register_buffer("points", torch.from_numpy(witnesses.astype(np.float64)))
        answers = [leaf.answer for leaf in boxes + points]
        table = np.stack(answers) if answers else np.zeros((0, num_classes))
        clamped = np.maximum(table.astype(np.float64), SMALLEST_ANSWER)
        self.register_buffer("log_answers", torch.from_numpy(np.log(clamped)).float())
        self.device_anchor = device_anchor()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double()
        n = flat.shape[0]
        if self.log_answers.shape[0] == 0:  # nothing was answered: uniform
            return torch.zeros(n, self.num_classes, device=x.device)
        distance = flat.new_zeros(n, self.num_boxes)
        if self.bound_box.numel():
            excess = self.bound_sign * (flat[:, self.bound_feature] - self.bound_threshold)
            distance.index_add_(1, self.bound_box, excess.clamp_min(0.0))
        if self.points.shape[0]:
            distance = torch.cat([distance, torch.cdist(flat, self.points, p=1)], dim=1)
        return self.log_answers[distance.argmin(dim=1)]
