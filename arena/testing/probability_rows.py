"""Probability batches a defense is fed in its checks, from gentle to degenerate."""

from __future__ import annotations

import numpy as np
import torch

from arena.testing.core import expect

CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
"""the task defenses are checked on: 10 classes of 1x8x8 images (digits-sized)"""


def softmax_rows(n: int, scale: float, seed: int) -> torch.Tensor:
    """``n`` random softmax rows; a larger ``scale`` gives more confident rows."""
    logits = np.random.default_rng(seed).normal(size=(n, CLASSES)) * scale
    return torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=1)


def dominant_rows(value: float) -> torch.Tensor:
    """Rows with one dominant class and every other entry equal to ``value``."""
    rows = torch.full((CLASSES, CLASSES), value, dtype=torch.float32)
    rows[torch.arange(CLASSES), torch.arange(CLASSES)] = 1.0 - (CLASSES - 1) * value
    return rows


def extreme_probs() -> torch.Tensor:
    """Softmax batches from gentle to degenerate (one-hot, uniform, denormals, ties), each row
    summing to one: where clipping, logs and divisions break."""
    tie = torch.zeros(2, CLASSES)
    tie[0, :2] = 0.5
    tie[1, [3, 7]] = 0.5
    parts = [
        softmax_rows(64, 1.0, seed=0),
        softmax_rows(64, 4.0, seed=1),
        softmax_rows(32, 40.0, seed=2),  # one-hot-ish
        torch.eye(CLASSES),  # exact one-hot
        torch.full((3, CLASSES), 1.0 / CLASSES),  # uniform
        dominant_rows(1e-30),
        dominant_rows(1e-40),  # float32 denormals
        dominant_rows(1e-7),
        tie,
    ]
    return torch.cat(parts)


def inputs_for(probs: torch.Tensor) -> torch.Tensor:
    """Fixed images in [0, 1] the probabilities are said to answer."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(len(probs), *INPUT_SHAPE, generator=generator)


def expect_probability_rows(out: object, n: int) -> None:
    """``out`` is a finite float32 ``[n, CLASSES]`` tensor of non-negative rows summing to one."""
    expect(isinstance(out, torch.Tensor), f"answered with {type(out).__name__}, not a tensor")
    assert isinstance(out, torch.Tensor)
    expect(tuple(out.shape) == (n, CLASSES), f"shape {tuple(out.shape)}, expected ({n}, {CLASSES})")
    expect(out.dtype == torch.float32, f"dtype {out.dtype}, expected torch.float32")
    expect(bool(torch.isfinite(out).all()), "answers hold NaN or infinity")
    expect(bool((out >= 0).all()), f"negative probabilities (min {float(out.min()):.3g})")
    error = (out.sum(dim=1) - 1).abs()
    worst = int(error.argmax())
    expect(
        float(error[worst]) <= 1e-5,
        f"row {worst} sums to {float(out[worst].sum()):.6g}, not 1",
    )
