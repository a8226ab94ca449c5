"""Defenses composed in config order on one victim, each one's time accounted separately."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from arena.defenses.base import Defense
from arena.defenses.registry import DEFENSES
from arena.registry import build_plugin
from arena.specs import PluginSpec


@dataclass(frozen=True)
class DefenseChain:
    """An ordered tuple of defenses; an empty chain answers with the raw probabilities."""

    defenses: tuple[Defense, ...]

    @property
    def preserves_argmax(self) -> bool:
        return all(d.preserves_argmax for d in self.defenses)

    def new_states(self) -> list[Any]:
        return [d.new_state() for d in self.defenses]

    def respond(
        self, probs: torch.Tensor, x: torch.Tensor, states: Sequence[Any]
    ) -> tuple[torch.Tensor, list[float]]:
        """Apply each defense in order; also return the seconds each one took."""
        seconds: list[float] = []
        for defense, state in zip(self.defenses, states, strict=True):
            start = time.perf_counter()
            probs = defense.respond(probs, x, state)
            seconds.append(time.perf_counter() - start)
        return probs, seconds


def build_chain(specs: Sequence[PluginSpec]) -> DefenseChain:
    """Instantiate registered defenses; unknown names and bad parameters raise typed errors."""
    return DefenseChain(tuple(build_plugin(DEFENSES, s.name, s.params) for s in specs))
