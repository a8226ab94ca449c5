"""Metrics defined once (DESIGN §6), row-wise over ``[N, C]`` probability tensors."""

from __future__ import annotations

import math

import torch

_FLOOR = 1e-12


def l1_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row L1 distance between two probability batches."""
    return (p - q).abs().sum(dim=1)


def kl_divergence(answer: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row KL(answer ‖ reference) in nats.

    The direction is chosen so the value is finite for every defense: the reference (undefended
    softmax) has full support, while answers may contain exact zeros (label-only, top-k), which
    contribute nothing. For a one-hot answer it is the surprise ``-log p(top-1)``.
    """
    ratio = torch.log(answer.clamp_min(_FLOOR)) - torch.log(reference.clamp_min(_FLOOR))
    return torch.where(answer > 0, answer * ratio, torch.zeros_like(answer)).sum(dim=1)


def agreement(p: torch.Tensor, q: torch.Tensor) -> float:
    """Share of rows whose argmax agrees (fidelity when one side is the undefended victim), as
    an exact fraction (a float32 mean would record 0.9052 as 0.9052000045776367)."""
    return share(p.argmax(dim=1) == q.argmax(dim=1))


def share(hits: torch.Tensor) -> float:
    """The fraction of true entries, counted in integers (``nan`` when there are none)."""
    return int(hits.sum()) / hits.numel() if hits.numel() else float("nan")


def exact_sum(values: torch.Tensor) -> float:
    """The correctly rounded sum of every element (``math.fsum``): unlike a tensor reduction it
    does not depend on memory alignment or vector width, so the accounts a service keeps are the
    same in this process and in a Ray actor."""
    return math.fsum(values.detach().double().flatten().tolist())
