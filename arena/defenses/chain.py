"""Defenses composed in config order on one victim, each one's time accounted separately."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.defenses.base import Defense, OwnershipEvidence
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.metrics import exact_sum
from arena.registry import build_plugin, plugin_label
from arena.specs import PluginSpec
from arena.targets import Targets
from arena.zoo import ZooProfile


@dataclass(frozen=True)
class DefenseChain:
    """An ordered tuple of defenses; an empty chain answers with the raw probabilities."""

    defenses: tuple[Defense, ...]
    names: tuple[str, ...] = ()
    """the registered name of each defense (:func:`build_chain` fills it in)"""

    @property
    def label(self) -> str:
        """``name@version(params) -> ...``, or ``none``: how records and audit logs name it."""
        named = zip(self.names, self.defenses, strict=True) if self.names else ()
        return " -> ".join(plugin_label(name, d) for name, d in named) or "none"

    @property
    def preserves_argmax(self) -> bool:
        return all(d.preserves_argmax for d in self.defenses)

    @property
    def needs_preparation(self) -> bool:
        """True when some defense overrides ``prepare`` (builds or trains models)."""
        return any(type(d).prepare is not Defense.prepare for d in self.defenses)

    @property
    def needs_training(self) -> bool:
        """True when preparing trains models (worth doing once, ahead of serving)."""
        return any(type(d).needs_training for d in self.defenses)

    @property
    def builds_ahead(self) -> bool:
        """True when preparing trains something worth building once, ahead of serving: a new
        victim (training-time defenses) or auxiliary models (encoders, fingerprints)."""
        return any(type(d).needs_training or type(d).builds_models for d in self.defenses)

    @property
    def stateful(self) -> bool:
        return any(type(d).stateful for d in self.defenses)

    @property
    def has_detector(self) -> bool:
        return any(type(d).detector for d in self.defenses)

    @property
    def requires_work(self) -> bool:
        """True when callers must solve a proof-of-work puzzle before a batch is answered."""
        return any(type(d).requires_work for d in self.defenses)

    def work_bits(self, states: Sequence[Any], batch: int) -> int:
        """The puzzle difficulty of a caller's next batch: the hardest any defense asks for."""
        asked = [
            d.work_bits(s, batch)
            for d, s in zip(self.defenses, states, strict=True)
            if type(d).requires_work
        ]
        return max(asked, default=0)

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        """Let each defense, in order, train what it needs and replace the served model."""
        for defense in self.defenses:
            model = defense.prepare(model, context).eval()
        return model

    def new_states(self) -> list[Any]:
        return [d.new_state() for d in self.defenses]

    def refusal(self, states: Sequence[Any]) -> str | None:
        """The first defense's reason to refuse this caller, if any defense refuses."""
        for defense, state in zip(self.defenses, states, strict=True):
            reason = defense.refusal(state)
            if reason is not None:
                return reason
        return None

    def detected_after(self, states: Sequence[Any]) -> int | None:
        """Queries the caller had sent when the first of the chain's detectors flagged it."""
        flagged = [
            n
            for d, s in zip(self.defenses, states, strict=True)
            if (n := d.detected_after(s)) is not None
        ]
        return min(flagged) if flagged else None

    def ownership_keys(self, states: Sequence[Any]) -> list[tuple[int, OwnershipEvidence]]:
        """Every verifier's keys for one caller, with the verifier's position in the chain."""
        found = []
        for position, (defense, state) in enumerate(zip(self.defenses, states, strict=True)):
            keys = defense.ownership_keys(state)
            if keys is not None:
                found.append((position, keys))
        return found

    def perturb_targets(
        self, targets: Targets, profile: ZooProfile, rng: np.random.Generator
    ) -> Targets:
        """A zoo's targets after each defense's target hook, in chain order."""
        for defense in self.defenses:
            targets = defense.perturb_targets(targets, profile, rng)
        return targets

    def respond(
        self, probs: torch.Tensor, x: torch.Tensor, states: Sequence[Any]
    ) -> tuple[torch.Tensor, list[float], list[float]]:
        """Apply each defense in order; also return the seconds each one took and the summed L1
        change each one made to the batch (so a chain's cost and perturbation are accounted)."""
        seconds: list[float] = []
        changes: list[float] = []
        for defense, state in zip(self.defenses, states, strict=True):
            start = time.perf_counter()
            answered = defense.respond(probs, x, state)
            seconds.append(time.perf_counter() - start)
            changes.append(exact_sum((answered - probs).abs()))
            probs = answered
        return probs, seconds, changes


def build_chain(specs: Sequence[PluginSpec]) -> DefenseChain:
    """Instantiate registered defenses; unknown names and bad parameters raise typed errors."""
    defenses = tuple(build_plugin(DEFENSES, s.name, s.params) for s in specs)
    return DefenseChain(defenses, tuple(s.name for s in specs))
