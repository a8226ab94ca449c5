"""Watermark-removal attacks: what a thief does to its stolen model before anyone checks it.

Ownership verification is only worth something if it survives the cheap ways a thief has to
change a model it already holds (Szyller et al. 2021 and the adversarial-watermarking work both
test these). Each removal is a registered plug-in applied by the referee to the substitute after
the theft, before stolen accuracy and ownership are measured, using only the thief's knowledge:

- ``prune``: global magnitude pruning of the weights of every linear and convolutional layer
  (``amount`` of them set to zero, the smallest by absolute value; ``torch.nn.utils.prune``);
- ``fine_tune``: training on ``images`` pool images labelled by the substitute itself, with a
  learning rate high enough to move the weights (the thief has no labels of its own);
- ``distill``: knowledge distillation (Hinton et al. 2015) into a *fresh* model of the thief's
  substitute architecture, trained on ``images`` pool images against the stolen model's soft
  outputs (the soft cross-entropy of :func:`~arena.training.train_classifier`, which differs
  from the KL divergence only by the targets' constant entropy); no temperature: the stolen
  model's probabilities at T=1 (a CPU-sized simplification of the paper's softened targets).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from arena.knowledge import Knowledge
from arena.registry import Registry
from arena.seeds import torch_seed
from arena.training import TrainRecipe, predict_probs, train_classifier
from arena.validation import check_integer, check_number


@dataclass(frozen=True)
class Removal:
    """Base: returns a changed copy of the stolen model (the original is left alone)."""

    def apply(self, model: nn.Module, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        raise NotImplementedError


REMOVALS: Registry[type[Removal]] = Registry("removal")

make_permanent: Callable[[nn.Module, str], nn.Module] = prune.remove
"""folds a pruning mask into the weight (torch ships it without type hints)"""


def pick_rows(pool: torch.Tensor, images: int, rng: np.random.Generator) -> torch.Tensor:
    """Indices of ``images`` distinct pool rows drawn with ``rng`` (all of a smaller pool)."""
    rows = rng.choice(int(pool.shape[0]), min(images, int(pool.shape[0])), replace=False)
    return torch.from_numpy(rows)


@REMOVALS.register("none")
@dataclass(frozen=True)
class NoRemoval(Removal):
    """The stolen model as the thief got it."""

    def apply(self, model: nn.Module, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        return model


@REMOVALS.register("prune")
@dataclass(frozen=True)
class Prune(Removal):
    """Global magnitude pruning of linear and convolutional weights."""

    amount: float = 0.4
    """share of the weights set to zero, in [0, 1)"""

    def __post_init__(self) -> None:
        check_number("amount", self.amount, low=0, high=1, high_open=True)

    def apply(self, model: nn.Module, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        pruned = copy.deepcopy(model)
        layers = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        if layers and self.amount > 0:
            prune.global_unstructured(layers, prune.L1Unstructured, amount=float(self.amount))
            for module, name in layers:
                make_permanent(module, name)
        return pruned.eval()


@dataclass(frozen=True)
class PoolTraining(Removal):
    """Base of the removals that train on pool images labelled by the stolen model."""

    images: int = 2000
    """pool images used (at most the pool)"""
    epochs: int = 5
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check_integer("images", self.images, low=1)
        check_integer("epochs", self.epochs, low=1)
        check_number("lr", self.lr, low=0, high=1, low_open=True)


@REMOVALS.register("fine_tune")
@dataclass(frozen=True)
class FineTune(PoolTraining):
    """Fine-tuning on pool images labelled by the stolen model itself."""

    def apply(self, model: nn.Module, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        if knowledge.pool is None:
            return model  # a data-free thief has nothing to fine-tune on
        x = knowledge.pool[self.pick(knowledge.pool, rng)]
        return self.tune(model, x, predict_probs(model, x).argmax(dim=1), rng)

    def pick(self, pool: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Indices of the ``images`` pool rows fine-tuned on (all of a smaller pool)."""
        return pick_rows(pool, self.images, rng)

    def tune(
        self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> nn.Module:
        """A fine-tuned copy on ``x`` with ``labels``: the model's own, or true labels for a
        thief that has some (the benchmarks' stronger-thief variant)."""
        tuned = copy.deepcopy(model)
        recipe = TrainRecipe(epochs=self.epochs, lr=float(self.lr), batch_size=128)
        return train_classifier(tuned, x, labels, recipe, seed=torch_seed(rng))


@REMOVALS.register("distill")
@dataclass(frozen=True)
class Distill(PoolTraining):
    """Distillation into a fresh model on pool images, soft-labelled by the stolen model.

    None of the stolen weights survive, only the stolen model's behaviour on the pool."""

    epochs: int = 50
    """passes over them: a fresh model needs more than fine-tuning (on the 400-image digits
    pool, 20 epochs agree with the stolen model on 89% of the test set, 50 on 96%)"""

    def apply(self, model: nn.Module, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        if knowledge.pool is None:
            return model  # a data-free thief has nothing to distil on
        x = knowledge.pool[pick_rows(knowledge.pool, self.images, rng)]
        recipe = TrainRecipe(epochs=self.epochs, lr=float(self.lr), batch_size=128)
        return distil(model, x, knowledge, recipe, torch_seed(rng))


def distil(
    teacher: nn.Module, x: torch.Tensor, knowledge: Knowledge, recipe: TrainRecipe, seed: int
) -> nn.Module:
    """A fresh substitute (seeded ``seed``) trained on ``x`` against ``teacher``'s probabilities,
    in eval mode: the distillation shared by the ``distill`` removal and the model-access thief.
    Trained with :func:`~arena.training.train_classifier` directly, not :meth:`Knowledge.fit`: a
    removal happens after the theft and must not become the thief's recorded final fit."""
    student = knowledge.make_substitute(seed)
    soft = predict_probs(teacher, x)
    trained = train_classifier(
        student,
        x,
        soft,
        recipe,
        seed=seed,
        device=knowledge.device,
        mixed_precision=knowledge.mixed_precision,
    )
    return trained.eval()
