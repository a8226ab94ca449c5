"""Deterministic mini-batch training and batched inference shared by victims and thieves.

Tensors stay in memory and batches are drawn by index (no DataLoader): on a 2-core machine the
DataLoader's worker and collation overhead costs more than the model itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from arena.devices import CPU, autocast_dtype
from arena.metrics import share

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits, targets)`` for a mini-batch, a scalar to minimise"""


@dataclass(frozen=True)
class TrainRecipe:
    """How a classifier is fitted."""

    epochs: int = 10
    """passes over the training set"""
    lr: float = 1e-3
    """Adam learning rate"""
    batch_size: int = 128
    """mini-batch size"""
    weight_decay: float = 0.0
    """Adam weight decay"""
    cosine: bool = True
    """anneal the learning rate to zero over the run (steadier final accuracy than a constant)"""
    shift_pixels: int = 0
    """augmentation: translate each training image by a random whole number of pixels, up to
    this many in each direction (zero fill); 0 = off. Images only (``[N, C, H, W]``): other
    inputs train unshifted."""

    def describe(self) -> dict[str, object]:
        """The recipe in a match record: optimiser settings, schedule and augmentation."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "schedule": "cosine" if self.cosine else "constant",
            "shift_pixels": self.shift_pixels,
            "weight_decay": self.weight_decay,
        }


REFERENCE_RECIPE = TrainRecipe(epochs=20, lr=1e-3, batch_size=64, cosine=False)
"""The fixed second-track recipe: plain constant-rate Adam as reference implementations of
Knockoff Nets and Copycat CNN train. Every match also retrains the thief's final transfer set
with it, so query selection and training quality can be told apart."""


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    recipe: TrainRecipe,
    seed: int,
    device: torch.device | str | None = None,
    loss_fn: LossFn | None = None,
    mixed_precision: bool = False,
) -> nn.Module:
    """Fit ``model`` on ``x``. ``targets`` are int labels ``[N]`` or probability rows ``[N, C]``.

    Soft targets use the cross-entropy against the given distribution, which is what a thief
    trained on returned probabilities minimises; one-hot rows reduce it to the usual loss.
    ``loss_fn`` replaces the cross-entropy (defenses that train models with other objectives).

    ``device``: where to train (``None``: where the model already is, so a model built on the
    process's device, :func:`arena.devices.choose_device`, trains there); ``x`` and ``targets``
    may stay on the CPU, each mini-batch is moved. The shuffling generator is a CPU one on
    every device, so the batches are the same ones everywhere. ``mixed_precision``: the forward
    pass runs under autocast (:func:`arena.devices.autocast_dtype`; on CUDA with a gradient
    scaler); the loss is taken in float32. Off, nothing changes.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model) if device is None else torch.device(device)
    model.to(device).train()
    scaler = torch.amp.GradScaler("cuda") if mixed_precision and device.type == "cuda" else None
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = int(x.shape[0])
    if n == 0:  # e.g. a thief whose budget was already spent: keep the initial weights
        return model.eval()
    steps = recipe.epochs * -(-n // recipe.batch_size)

    def rate(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / steps)) if recipe.cosine else 1.0

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    soft = targets.dim() == 2
    # batch norm cannot train on one image whose features are 1x1 (a ResNet on small inputs):
    # such models skip a last batch of one; models without batch norm train on every batch
    skip_singletons = n > 1 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            if skip_singletons and len(idx) == 1:
                continue
            xb, tb = x[idx], targets[idx].to(device)
            if recipe.shift_pixels and xb.dim() == 4:
                xb = random_shift(xb, recipe.shift_pixels, generator)
            xb = xb.to(device)
            with _autocast(device, mixed_precision):
                logits = model(xb)
            if mixed_precision:
                logits = logits.float()
            if loss_fn is not None:
                loss = loss_fn(logits, tb)
            elif soft:
                loss = -(tb * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            else:
                loss = F.cross_entropy(logits, tb)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # float16 gradients underflow unless the loss is scaled up first
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            schedule.step()
    model.eval()
    return model


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``[N, C, H, W]`` moved by its own random offset of at most ``pixels`` in
    each direction, the uncovered border zero: the classic translation augmentation, drawn
    from ``generator`` so a seeded run replays."""
    n, _, height, width = x.shape
    offsets = torch.randint(-pixels, pixels + 1, (2, n), generator=generator)
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    rows = torch.arange(height).unsqueeze(0) + pixels - offsets[0].unsqueeze(1)
    cols = torch.arange(width).unsqueeze(0) + pixels - offsets[1].unsqueeze(1)
    batch = torch.arange(n)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return moved.permute(0, 3, 1, 2).contiguous()


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return CPU if first is None else first.device


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """Autocast to the device's reduced precision, or nothing at all when off (the full-precision
    path then runs exactly the operations it always did)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=autocast_dtype(device))


@dataclass(frozen=True)
class FitReport:
    """How long a fit-until-memorised run took and how well it reproduces its targets."""

    epochs: int
    """epochs trained in all"""
    agreement: float
    """share of the training rows whose top-1 prediction equals the target's top-1"""


def train_until_fitted(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    recipe: TrainRecipe,
    seed: int,
    target_agreement: float,
    max_epochs: int,
    on_round: Callable[[nn.Module, FitReport], None] | None = None,
) -> tuple[nn.Module, FitReport]:
    """Train in rounds of ``recipe.epochs`` (each a fresh Adam run on the recipe's schedule,
    i.e. warm restarts) until the model's top-1 agrees with ``targets`` on at least
    ``target_agreement`` of ``x`` or ``max_epochs`` are spent.

    Why: a thief that memorises its answers (rather than stopping when it generalises) is the
    case a serving-side watermark is built for; how many epochs that takes is part of the answer.
    ``on_round`` sees the model after every round (e.g. to follow another metric).
    """
    labels = targets.argmax(dim=1) if targets.dim() == 2 else targets
    epochs, agreement, round_index = 0, 0.0, 0
    while epochs < max_epochs:
        step = min(recipe.epochs, max_epochs - epochs)
        round_recipe = replace(recipe, epochs=step)
        model = train_classifier(model, x, targets, round_recipe, seed=seed + round_index)
        epochs += step
        round_index += 1
        agreement = accuracy(predict_probs(model, x), labels) if len(labels) else 1.0
        report = FitReport(epochs=epochs, agreement=agreement)
        if on_round is not None:
            on_round(model, report)
        if agreement >= target_agreement:
            break
    return model, FitReport(epochs=epochs, agreement=agreement)


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax outputs for ``x`` on the model's device, returned on the CPU."""
    model.eval()
    device = model_device(model)
    outs = [
        torch.softmax(model(x[i : i + batch_size].to(device)), dim=1).cpu()
        for i in range(0, int(x.shape[0]), batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy as an exact fraction (see :func:`arena.metrics.share`)."""
    return share(probs.argmax(dim=1) == labels)
