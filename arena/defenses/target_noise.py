"""Noise on a model zoo's serving targets: the defense against fingerprinting.

A model zoo (:mod:`arena.zoo`) answers each request with the cheapest member that meets the
caller's targets, so a thief who has found targets that pin one member can extract it as if it
were served alone. Sanyal et al. (2023) thwart that by perturbing the stated targets before the
zoo selects: near a selection boundary the same targets then reach different members, and the
thief's transfer set mixes several models. Honest callers pay in goodput: a perturbed request
can be served by a member that misses the targets they stated.

Per request (one batch), from the caller's own random stream:
``min_accuracy + scale * A * N(0, 1)`` clipped to [0, 1], and
``max_latency_ms * exp(scale * L * N(0, 1))`` (unchanged when unlimited), where ``A`` is the
spread of the members' accuracies and ``L`` of their log latencies, so ``scale`` means the same
on any zoo: at 1 the noise is as wide as the zoo itself. The answers themselves are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from arena.defenses.base import Defense, FloatRange, ParamSpace
from arena.defenses.registry import DEFENSES
from arena.targets import Targets
from arena.validation import check_number
from arena.zoo import ZooProfile

MIN_ACCURACY_SPREAD = 0.01
"""noise width for zoos whose members are equally accurate"""
MIN_LOG_LATENCY_SPREAD = math.log(2.0)
"""noise width (log scale) for zoos whose members are equally fast"""


@DEFENSES.register("target_noise")
@dataclass(frozen=True)
class TargetNoise(Defense):
    """Gaussian noise on the stated accuracy target and log-normal noise on the latency target."""

    scale: float = 0.25
    """noise width as a fraction of the zoo's spread of accuracies and log latencies, >= 0"""

    preserves_argmax = True  # the chain's answers are untouched; which member answers changes
    zoo_only = True
    search_space: ClassVar[dict[str, ParamSpace]] = {"scale": FloatRange(0.01, 2.0, log=True)}

    def __post_init__(self) -> None:
        check_number("scale", self.scale, low=0)

    def perturb_targets(
        self, targets: Targets, profile: ZooProfile, rng: np.random.Generator
    ) -> Targets:
        accuracy_spread = max(max(profile.accuracy) - min(profile.accuracy), MIN_ACCURACY_SPREAD)
        log_latency_spread = max(
            math.log(max(profile.latency_ms) / min(profile.latency_ms)), MIN_LOG_LATENCY_SPREAD
        )
        noise_accuracy, noise_latency = rng.standard_normal(2)
        accuracy = targets.min_accuracy + self.scale * accuracy_spread * float(noise_accuracy)
        latency = targets.max_latency_ms
        if math.isfinite(latency):
            latency *= math.exp(self.scale * log_latency_spread * float(noise_latency))
        return Targets(min(max(accuracy, 0.0), 1.0), max(latency, 1e-9))
