"""PRADA (Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing Attacks",
EuroS&P 2019): flag a caller whose stream of queries stops looking like natural data.

For each caller and each class ``c`` the victim predicts, PRADA keeps a growing set ``G_c`` of the
caller's queries. A new query predicted as ``c`` contributes its minimum L2 distance to ``G_c``
to the caller's distance list ``D``; it joins ``G_c`` when that distance exceeds the class
threshold ``T_c = max(T_c, mean - std)`` of the distances that admitted earlier members.
Natural queries give roughly normally distributed minimum distances; synthetic queries (small
perturbations of a few seeds, as in Papernot's JBDA) give a spiky, skewed distribution. Once
``D`` holds ``min_samples`` values, a Shapiro-Wilk statistic ``W < delta`` flags the caller.

The scan is sequential by nature (each query's distance depends on the set its predecessors
built), so ``respond`` walks the batch in order; distances are one ``torch.cdist`` against the
class's stored tensor. The test runs after every query until the caller is flagged, so
``detected_after`` is exact to the query. The state is per caller: one thief never changes what
another caller is told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from scipy.stats import shapiro

from arena.defenses.base import Choice, Defense, FloatRange, ParamSpace
from arena.defenses.detection import RESPONSES, refusal_after_flag, respond_after_flag
from arena.defenses.registry import DEFENSES
from arena.validation import check_choice, check_integer, check_number

SHAPIRO_MAX = 5000


@dataclass
class _ClassSet:
    """One class's growing set: stored queries (a buffer that doubles, so adding is amortised
    O(1)) and running moments of the distances that admitted them."""

    buffer: torch.Tensor
    size: int = 1
    admitted: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    threshold: float = 0.0

    @property
    def members(self) -> torch.Tensor:
        return self.buffer[: self.size]

    def add(self, row: torch.Tensor, distance: float) -> None:
        if self.size == len(self.buffer):
            self.buffer = torch.cat([self.buffer, torch.empty_like(self.buffer)])
        self.buffer[self.size] = row
        self.size += 1
        self.admitted += 1
        self.total += distance
        self.total_sq += distance * distance
        if self.admitted > 1:
            mean = self.total / self.admitted
            std = math.sqrt(max(self.total_sq / self.admitted - mean * mean, 0.0))
            self.threshold = max(self.threshold, mean - std)


@dataclass
class PradaState:
    """One caller's history as PRADA sees it."""

    sets: dict[int, _ClassSet] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)
    seen: int = 0
    flagged_after: int | None = None
    last_w: float | None = None


@DEFENSES.register("prada")
@dataclass(frozen=True)
class Prada(Defense):
    """Flags callers whose minimum query distances fail a Shapiro-Wilk normality test (PRADA)."""

    stateful = True
    detector = True

    delta: float = 0.9
    """flag when the Shapiro-Wilk W of the caller's distances drops below this (0 < delta < 1)"""
    min_samples: int = 100
    """distances collected before the test runs (the paper uses 100)"""
    response: str = "flag"
    """after detection: "flag" (answer as before), "refuse" (refuse later batches uncharged) or
    "misinformation" (answer with a wrong top-1 label)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "delta": FloatRange(0.8, 0.99),
        "response": Choice(RESPONSES),
    }

    def __post_init__(self) -> None:
        check_number("delta", self.delta, low=0, high=1, low_open=True, high_open=True)
        check_integer("min_samples", self.min_samples, low=3)
        check_choice("response", self.response, RESPONSES)

    def new_state(self) -> PradaState:
        return PradaState()

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        assert isinstance(state, PradaState)
        rows = x.detach().reshape(len(x), -1).to(torch.float32)
        for row, label in zip(rows, probs.argmax(dim=1).tolist(), strict=True):
            self._observe(state, row, int(label))
        return respond_after_flag(self.response, probs, state.seen, state.flagged_after)

    def _observe(self, state: PradaState, row: torch.Tensor, label: int) -> None:
        state.seen += 1
        group = state.sets.get(label)
        if group is None:
            state.sets[label] = _ClassSet(row[None].clone().repeat(16, 1))
        else:
            nearest = float(torch.cdist(row[None], group.members).min())
            state.distances.append(nearest)
            if nearest > group.threshold:
                group.add(row, nearest)
        if state.flagged_after is None and len(state.distances) >= self.min_samples:
            # scipy's W is accurate up to 5000 values: test the most recent ones
            state.last_w = float(shapiro(state.distances[-SHAPIRO_MAX:]).statistic)
            if state.last_w < self.delta:
                state.flagged_after = state.seen

    def refusal(self, state: Any) -> str | None:
        assert isinstance(state, PradaState)
        w = state.last_w
        reason = "PRADA" if w is None else f"PRADA (Shapiro-Wilk W={w:.3f} < {self.delta})"
        return refusal_after_flag(self.response, state.flagged_after, reason)

    def detected_after(self, state: Any) -> int | None:
        assert isinstance(state, PradaState)
        return state.flagged_after
