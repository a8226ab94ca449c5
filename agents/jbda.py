"""Jacobian-based dataset augmentation: JBDA and its targeted randomised variant JBDA-TR.

**JBDA** (Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against
Machine Learning", AsiaCCS 2017). The thief starts from a small seed set of natural images (here
drawn from its pool) labelled by the oracle, and alternates two steps until the budget is spent:

1. train the substitute ``F`` on every point labelled so far;
2. grow the set: for each point ``x`` with oracle label ``y``, synthesise
   ``x' = clip(x + λ_ρ · sign(∇_x F(x)[y]), low, high)`` — a step along the direction in which
   the substitute's score for the oracle's label changes fastest, i.e. towards the victim's
   decision boundaries — and ask the oracle to label every ``x'``.

Each round doubles the set, so a budget ``B`` takes about ``log2(B / seed_size)`` rounds; the last
augmentation is cut to the budget left (a random subset of the parents). The step's sign flips
every ``τ`` rounds, ``λ_ρ = λ · (−1)^⌊ρ/τ⌋`` (the paper's periodic step size), so the points do
not keep drifting in one direction. ``F(x)[y]`` is the substitute's logit for ``y``, as in the
reference implementation (cleverhans' ``jacobian_augmentation``).

**JBDA-TR** (Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing
Attacks", EuroS&P 2019). The same loop, but each synthetic point takes a targeted step towards a
random class ``t ≠ y``: ``x' = clip(x − λ · sign(∇_x CE(F(x), t)), low, high)``, which spreads the
new points over more decision boundaries than JBDA's untargeted step.

The round substitute, which only steers the augmentation, keeps its weights from round to round
(each round is ``round_epochs`` more passes over the grown set); once the budget is spent, the
final substitute is trained from scratch on every answered point with the thieves' shared recipe
(:mod:`agents._thief_recipe`: ``epochs``, ``min_steps``, ...). It learns from the oracle's top-1
labels, or from its returned rows with ``soft_labels``. Input gradients are computed in chunks
with one backward pass per chunk.
Against a detector that refuses (PRADA was built to catch exactly these attacks) the loop stops
and the substitute is trained on what was answered.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._rounds import ask, training_targets
from agents._thief_recipe import ThiefTraining
from arena.attacker import ATTACKS, Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import model_device
from arena.validation import check_bool, check_integer, check_number

GRADIENT_CHUNK = 1024
"""points per backward pass when computing input gradients"""

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(logits, classes)``: a scalar whose input gradient is each point's step direction"""


@dataclass(frozen=True)
class JacobianAugmentation(ThiefTraining, Attacker):
    """Shared loop of JBDA and JBDA-TR: seed, train, augment by input-gradient steps, repeat."""

    seed_size: int = 100
    """pool images in the initial set (capped by the budget); each round then doubles the set"""
    step_size: float = 0.1
    """λ: the L∞ length of each augmentation step, in input units (the paper uses 0.1 on [0, 1])"""
    shift_pixels: int = 1
    """augmentation of every fit (rounds and final): random translations of up to this many
    pixels. On by default for JBDA alone: its transfer set is a hundred pool images and their
    Jacobian children, which long training overfits; at 1k queries on the default victim one
    pixel of shift took the final substitute from 0.664 to 0.704 (3 seeds)"""
    round_epochs: int = 10
    """round-substitute training epochs per round over the set labelled so far (the final
    substitute trains on the shared thief recipe)"""
    query_batch: int = 256
    """points per oracle call"""
    soft_labels: bool = False
    """train on the oracle's returned rows instead of its top-1 labels"""

    def __post_init__(self) -> None:
        super().__post_init__()  # the base class checks the options every attack shares
        self.check_training()
        for name in ("seed_size", "round_epochs", "query_batch"):
            check_integer(name, getattr(self, name), low=1)
        check_number("step_size", self.step_size, low=0, low_open=True)
        check_bool("soft_labels", self.soft_labels)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        low, high = oracle.input_spec.low, oracle.input_spec.high
        pool = knowledge.pool
        seeds = rng.choice(len(pool), min(self.seed_size, oracle.remaining, len(pool)), False)
        x = pool[torch.from_numpy(np.sort(seeds))]
        answers, stop = ask(oracle, x, self.query_batch)
        x = x[: len(answers)]
        substitute = knowledge.make_substitute(torch_seed(rng))
        for round_index in itertools.count():
            if stop or len(x) == 0:
                break
            recipe = self.training_recipe(len(x), epochs=self.round_epochs)
            substitute = knowledge.fit(
                substitute, x, self.targets(answers), recipe, torch_seed(rng)
            )
            parents = torch.arange(len(x))
            if len(x) > oracle.remaining:  # the last augmentation: as many parents as queries left
                chosen = rng.choice(len(x), oracle.remaining, replace=False)
                parents = torch.from_numpy(np.sort(chosen))
            labels = answers[parents].argmax(dim=1)
            step = self.augment(
                substitute, x[parents], labels, knowledge.num_classes, round_index, rng
            )
            children = step.clamp(low, high)
            new_answers, stop = ask(oracle, children, self.query_batch)
            x = torch.cat([x, children[: len(new_answers)]])
            answers = torch.cat([answers, new_answers])
        return self.fit_substitute(knowledge, x, answers, torch_seed(rng), self.targets)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        """The oracle's top-1 labels, or its renormalised rows with ``soft_labels``."""
        return training_targets(answers, self.soft_labels)

    def augment(
        self,
        substitute: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        round_index: int,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """The synthetic children of ``x`` (oracle labels ``labels``) before clipping."""
        raise NotImplementedError


@ATTACKS.register("jbda", version=2)
@dataclass(frozen=True)
class Jbda(JacobianAugmentation):
    """JBDA (Papernot et al. 2017): grows a seed set by Jacobian sign steps, periodic step size."""

    tau: int = 3
    """the step's sign flips every ``tau`` rounds: λ_ρ = λ · (−1)^⌊ρ/τ⌋"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("tau", self.tau, low=1)

    def signed_step(self, round_index: int) -> float:
        """λ_ρ for augmentation round ``round_index`` (0-based)."""
        return self.step_size * (-1.0) ** (round_index // self.tau)

    def augment(
        self,
        substitute: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        round_index: int,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        gradients = input_gradients(substitute, x, labels, class_logit)
        return x + self.signed_step(round_index) * gradients.sign()


@ATTACKS.register("jbda_tr", version=2)
@dataclass(frozen=True)
class JbdaTR(JacobianAugmentation):
    """JBDA-TR (Juuti et al. 2019): Jacobian augmentation by targeted steps to random classes."""

    def augment(
        self,
        substitute: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        round_index: int,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        shift = torch.from_numpy(rng.integers(1, num_classes, size=len(x)))
        targets = (labels + shift) % num_classes  # uniform over the classes other than the label
        gradients = input_gradients(substitute, x, targets, target_loss)
        return x - self.step_size * gradients.sign()


def class_logit(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each point's logit for its class (JBDA's ``F(x)[y]``)."""
    return logits.gather(1, classes[:, None]).sum()


def target_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy towards each point's target class (JBDA-TR's loss)."""
    return F.cross_entropy(logits, classes, reduction="sum")


def input_gradients(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, objective: Objective
) -> torch.Tensor:
    """``∇_x objective`` for every row of ``x``: one backward pass per chunk of points.

    The objective sums per-point terms and the points do not interact in an eval-mode forward
    pass, so the gradient of the sum with respect to the batch is every point's own gradient.
    The gradients are computed on the model's device and returned on the CPU, beside ``x``.
    """
    model.eval()
    device = model_device(model)
    chunks = []
    for start in range(0, int(x.shape[0]), GRADIENT_CHUNK):
        xb = x[start : start + GRADIENT_CHUNK].to(device).detach().clone().requires_grad_(True)
        chosen = classes[start : start + GRADIENT_CHUNK].to(device)
        (gradient,) = torch.autograd.grad(objective(model(xb), chosen), xb)
        chunks.append(gradient.cpu())
    return torch.cat(chunks) if chunks else torch.empty_like(x)
