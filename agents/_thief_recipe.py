"""How thieves train their substitutes: one recipe, shared by every transfer-set attack.

Chosen by measurement (``benchmarks/thief_strength.py``, docs/benchmarks.md): constant-rate Adam
(1e-3, batch 64) trained for at least ``min_steps`` optimiser steps. Annealing the rate to zero
cost 1.5-3 points of stolen accuracy at 1k and 5k queries, and a transfer set trained for a fixed
20 epochs is far from converged (1k queries are 16 steps an epoch). On the default victim, soft
labels, seed 0: 1k queries steal 0.772 after 20 epochs, 0.839 after 100; 5k queries 0.854 after
20, 0.873 after 40, 0.879 after 60 and 0.878 after 80, so 4000 steps is where it levels off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from agents._best_response import TargetFn, best_response
from arena.knowledge import Knowledge
from arena.registry import OPTION
from arena.training import TrainRecipe
from arena.validation import check_choice, check_integer, check_number

MIN_EPOCHS = 20
"""the automatic epoch count never goes below this (large transfer sets)"""
MIN_STEPS = 4000
"""the automatic epoch count trains at least this many optimiser steps (small transfer sets)"""
SCHEDULES = ("constant", "cosine")
MAX_TRIALS = 64
"""most candidates an inner best response may score (each is one substitute fit)"""


@dataclass(frozen=True)
class ThiefTraining:
    """The substitute-training fields every transfer-set attack takes (a mixin of attacks)."""

    epochs: int | None = None
    """passes over the transfer set; ``None``: at least ``min_steps`` optimiser steps and at
    least 20 epochs (what a thief that trains to convergence does)"""
    min_steps: int = MIN_STEPS
    """with ``epochs: null``, the fewest optimiser steps the substitute trains for"""
    lr: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 64
    """substitute training mini-batch"""
    schedule: Literal["constant", "cosine"] = "constant"
    """learning rate over the run: ``constant`` or ``cosine`` (annealed to zero)"""
    shift_pixels: int = 0
    """augmentation: random translations of up to this many pixels (0 = off)"""
    best_response_trials: int = field(default=0, metadata={OPTION: True})
    """inner best response (:mod:`agents._best_response`): candidate recipes and target forms
    scored on a held-out fifth of the thief's own answers, its own recipe first, before the
    final fit on all of them (0 or 1 = off: the attack's own recipe, as without the field; left
    out of match keys while off, so the keys of matches played before it stay the same)"""

    def check_training(self) -> None:
        """Typed errors for bad training fields (called from the attack's ``__post_init__``)."""
        if self.epochs is not None:
            check_integer("epochs", self.epochs, low=1)
        check_integer("min_steps", self.min_steps, low=1, high=10**7)
        check_integer("batch_size", self.batch_size, low=1)
        check_integer("shift_pixels", self.shift_pixels, low=0, high=16)
        check_number("lr", self.lr, low=0, high=10, low_open=True, high_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_integer("best_response_trials", self.best_response_trials, low=0, high=MAX_TRIALS)

    def training_recipe(self, examples: int, epochs: int | None = None) -> TrainRecipe:
        """The recipe for a transfer set of ``examples`` rows (``epochs`` overrides the field,
        e.g. an active learner's cheaper round substitutes)."""
        chosen = epochs if epochs is not None else self.epochs
        if chosen is None:
            steps_per_epoch = max(1, math.ceil(examples / self.batch_size))
            chosen = max(MIN_EPOCHS, math.ceil(self.min_steps / steps_per_epoch))
        return TrainRecipe(
            epochs=chosen,
            lr=self.lr,
            batch_size=self.batch_size,
            cosine=self.schedule == "cosine",
            shift_pixels=self.shift_pixels,
        )

    def fit_substitute(
        self,
        knowledge: Knowledge,
        x: torch.Tensor,
        answers: torch.Tensor,
        seed: int,
        targets: TargetFn,
    ) -> nn.Module:
        """A fresh substitute trained on the transfer set ``x``: every transfer-set attack's
        final fit. ``answers`` are the oracle's raw rows (or labels) and ``targets`` the attack's
        own transform of them; with ``best_response_trials`` the recipe and target form are
        searched first (:func:`agents._best_response.best_response`)."""
        if self.best_response_trials > 1:
            trials = self.best_response_trials
            model, _ = best_response(
                knowledge, x, answers, seed, trials, targets, self.training_recipe
            )
            return model
        substitute = knowledge.make_substitute(seed)
        recipe = self.training_recipe(len(x))
        return knowledge.fit(substitute, x, targets(answers), recipe, seed=seed)
