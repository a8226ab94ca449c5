"""What each Ray task and actor of a run asks Ray for, and the device a process then computes on.

Why a module of its own: the resources a match, a victim or a training task reserves and the
device it picks inside must agree (a task given a GPU uses it, a task given none never touches
CUDA), so both are read here from :class:`~orchestration.config.RaySettings` and
:func:`arena.devices.choose_device`, and tests check the plumbing without a GPU.

Who gets GPUs:

* a match task: ``gpus_per_match`` (its thief trains and scores the substitute there);
* a victim-service actor and a victim-training task: ``gpus_per_victim``;
* a defense-preparation task: none; the defenses that train models (surrogates, watermarks,
  misinformation models) build them on the CPU, so a GPU reserved there would sit idle.
"""

from __future__ import annotations

import logging
from typing import TypedDict

import ray
import torch

from arena.devices import choose_device
from orchestration.config import RaySettings

log = logging.getLogger(__name__)


class Resources(TypedDict):
    """The Ray options that reserve a task's or an actor's CPUs and GPUs."""

    num_cpus: float
    num_gpus: float


def match_resources(settings: RaySettings) -> Resources:
    """A match task: its CPUs (and torch threads) and its thief's share of a GPU."""
    return {"num_cpus": settings.cpus_per_match, "num_gpus": settings.gpus_per_match}


def victim_training_resources(settings: RaySettings) -> Resources:
    """A victim-training task: a match's CPUs and a victim's GPUs (training is the victim's
    work, and a victim served on a GPU is trained on one)."""
    return {"num_cpus": settings.cpus_per_match, "num_gpus": settings.gpus_per_victim}


def defense_preparation_resources(settings: RaySettings) -> Resources:
    """A defense-preparation task: a match's CPUs and no GPU (see the module docstring)."""
    return {"num_cpus": settings.cpus_per_match, "num_gpus": 0}


def victim_service_resources(settings: RaySettings) -> Resources:
    """A victim-service actor: its own CPUs (0: it shares the match CPUs) and GPUs."""
    return {"num_cpus": settings.cpus_per_victim, "num_gpus": settings.gpus_per_victim}


def assigned_device() -> torch.device:
    """The device of the Ray task or actor this runs in: CUDA when Ray assigned it GPUs (any
    share of one), else the CPU. Outside a Ray worker (the driver) no GPU is assigned."""
    return choose_device(float(len(ray.get_gpu_ids())))


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster has in all (its nodes' ``GPU`` resource)."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("GPU", 0))


def gpu_shortfall(settings: RaySettings, cluster_gpus: float) -> str | None:
    """Why tasks of ``settings`` could never be placed on a cluster of ``cluster_gpus`` GPUs
    (Ray would leave them pending for ever), or ``None`` when they could."""
    wanted = {
        name: value
        for name, value in (
            ("ray.gpus_per_match", settings.gpus_per_match),
            ("ray.gpus_per_victim", settings.gpus_per_victim),
        )
        if value > cluster_gpus
    }
    if not wanted:
        return None
    asked = ", ".join(f"{name} = {value:g}" for name, value in wanted.items())
    return f"{asked}, but the Ray cluster has {cluster_gpus:g} GPU(s)"
