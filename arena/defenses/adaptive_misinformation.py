"""Adaptive misinformation (Kariyappa and Qureshi, "Defending Against Model Stealing Attacks with
Adaptive Misinformation", CVPR 2020).

Stealing queries tend to be out of distribution (synthetic or from another dataset); benign ones
are not. The victim is retrained with outlier exposure (Hendrycks et al. 2019: cross-entropy on
its own data plus ``outlier_weight`` times the cross-entropy to the uniform answer on outliers),
so its top probability becomes an out-of-distribution score. A misinformation model, trained to
minimise ``-log(1 - p_true)``, gives confidently wrong answers. Each answer blends the two:
``(1 - a) * victim + a * misinformation`` with ``a = sigmoid(nu * (tau - max_prob))``: confident
(in-distribution) queries get the truth, the others misinformation.

No outlier dataset ships with the arena, so outliers are made from the defender's own images:
each image with its pixels permuted, or with its tiles (a 4 x 4 grid) shuffled; they keep the
intensity statistics of real images but none of their structure. Both models are cached like
victims; ``tau`` and ``nu`` only change serving, so tuning them retrains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arena.defenses.base import Defense, FloatRange, ParamSpace
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.training import TrainRecipe, predict_probs, train_classifier
from arena.validation import check_integer, check_number

TILES_PER_SIDE = 4


@DEFENSES.register("adaptive_misinformation")
@dataclass(frozen=True)
class AdaptiveMisinformation(Defense):
    """Serves an outlier-exposed victim; low-confidence queries get a misinformation model."""

    tau: float = 0.5
    """confidence threshold: queries whose top probability is below it count as outliers"""
    nu: float = 1000.0
    """sharpness of the switch around ``tau`` (the blend is a sigmoid of slope ``nu``)"""
    outlier_weight: float = 0.5
    """weight of the outlier-exposure term while retraining the victim (training)"""
    epochs: int = 10
    """epochs of both trainings (training)"""
    lr: float = 0.003
    """Adam learning rate of both trainings (training)"""
    seed: int = 0
    """seed of both trainings and of the synthetic outliers (training)"""

    needs_training: ClassVar[bool] = True
    search_space: ClassVar[dict[str, ParamSpace]] = {
        "tau": FloatRange(0.1, 0.99),
        "nu": FloatRange(10.0, 1000.0, log=True),
    }

    def __post_init__(self) -> None:
        check_number("tau", self.tau, low=0, high=1, low_open=True)
        check_number("nu", self.nu, low=0)
        check_number("outlier_weight", self.outlier_weight, low=0)
        check_number("lr", self.lr, low=0, low_open=True)
        check_integer("epochs", self.epochs, low=1)
        check_integer("seed", self.seed, low=0)

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        recipe = TrainRecipe(epochs=self.epochs, lr=self.lr)
        shared = {"epochs": self.epochs, "lr": self.lr, "seed": self.seed}
        train = context.train

        def expose_outliers(fresh: nn.Module) -> None:
            outliers = synthetic_outliers(train.x, self.seed)
            classes = context.num_classes
            inliers = F.one_hot(train.y, classes).to(torch.float32)
            # cross-entropy to this row is outlier_weight times the cross-entropy to uniform
            uniform = torch.full((len(outliers), classes), self.outlier_weight / classes)
            x = torch.cat([train.x, outliers])
            train_classifier(fresh, x, torch.cat([inliers, uniform]), recipe, seed=self.seed)

        def misinform(fresh: nn.Module) -> None:
            train_classifier(
                fresh, train.x, train.y, recipe, seed=self.seed, loss_fn=misinformation_loss
            )

        exposed = context.cached_model(
            "adaptive_misinformation-victim",
            {**shared, "outlier_weight": self.outlier_weight},
            context.new_model,
            expose_outliers,
        )
        self.models["misinformation"] = context.cached_model(
            "adaptive_misinformation-misinformation", shared, context.new_model, misinform
        )
        return exposed

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        if len(probs) == 0:
            return probs
        wrong = predict_probs(self.models["misinformation"], x).to(probs.dtype)
        blend = torch.sigmoid(self.nu * (self.tau - probs.max(dim=1, keepdim=True).values))
        return (1 - blend) * probs + blend * wrong


def misinformation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p_true)``, computed stably as ``-logsumexp`` over the wrong classes' log-probs."""
    log_probs = torch.log_softmax(logits, dim=1)
    wrong = log_probs.scatter(1, labels[:, None], float("-inf"))
    return -torch.logsumexp(wrong, dim=1).mean()


def synthetic_outliers(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One outlier per image: even rows get their pixels permuted, odd rows their tiles shuffled
    (a fresh permutation per image, reproducible from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    n, channels, height, width = images.shape
    outliers = images.clone()
    flat = outliers[0::2].reshape(len(outliers[0::2]), channels, -1)
    order = torch.rand(flat.shape[0], 1, flat.shape[2], generator=generator).argsort(dim=2)
    outliers[0::2] = flat.gather(2, order.expand_as(flat)).reshape(-1, channels, height, width)
    tile_h, tile_w = height // TILES_PER_SIDE, width // TILES_PER_SIDE
    if tile_h and tile_w and n > 1:
        covered_h, covered_w = tile_h * TILES_PER_SIDE, tile_w * TILES_PER_SIDE
        region = outliers[1::2, :, :covered_h, :covered_w]
        tiles = F.unfold(region, kernel_size=(tile_h, tile_w), stride=(tile_h, tile_w))
        shuffle = torch.rand(len(tiles), 1, tiles.shape[2], generator=generator).argsort(dim=2)
        tiles = tiles.gather(2, shuffle.expand_as(tiles))
        outliers[1::2, :, :covered_h, :covered_w] = F.fold(
            tiles, (covered_h, covered_w), kernel_size=(tile_h, tile_w), stride=(tile_h, tile_w)
        )
    return outliers
