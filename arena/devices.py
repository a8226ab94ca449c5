"""The one place a process's torch device is chosen, and the precision mixed training uses there.

Why one place: a match's thief, a victim service and a victim-training task all turn "the GPUs
this process was given" into a device the same way, so a config that grants GPUs means the same
thing everywhere and a process granted none never touches CUDA (the CPU path stays the same
numbers it always was).

A process granted GPUs on a machine where torch sees no CUDA gets :class:`DeviceUnavailable`,
not a silent fallback to the CPU: the GPUs were reserved for it, and a match that quietly ran
on the CPU would waste them and report CPU timings as GPU ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from arena.errors import ArenaError

CPU = torch.device("cpu")


class DeviceUnavailable(ArenaError):
    """GPUs were granted to this process but torch sees no CUDA device."""


def choose_device(
    gpus: float, cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> torch.device:
    """``cuda`` when this process was given GPUs (``gpus > 0``, fractions of a card included),
    else ``cpu``; :class:`DeviceUnavailable` when GPUs were given but CUDA is not there.

    ``cuda_available`` is torch's own check; tests on a machine without CUDA pass another to
    see the choice a GPU machine would make. Several GPUs still mean one device: a match, a
    victim or a training run uses one card (the first Ray assigned)."""
    if math.isnan(gpus) or gpus < 0:
        raise ValueError(f"gpus must be a number >= 0, not {gpus!r}")
    if gpus == 0:
        return CPU
    if not cuda_available():
        raise DeviceUnavailable(
            f"this process was given {gpus:g} GPU(s) but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
            "install a CUDA build of torch on the GPU nodes, or set the GPU settings to 0"
        )
    return torch.device("cuda")


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The reduced precision mixed-precision training uses on ``device``: float16 on CUDA (with a
    gradient scaler), bfloat16 on the CPU (float16 autocast is not supported there, and
    bfloat16's range needs no scaler)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
