"""The naive zoo thief: an extraction attack sent with fixed targets, no fingerprinting.

The baseline of Sanyal et al. (2023): the thief does not know which member of a model zoo its
targets select, so it steals whatever model they happen to reach (with the default, no targets,
the cheapest member). Compare with :mod:`agents.fingerprint`, which first finds targets that
pin the member it wants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from agents._zoo import ZooThief
from arena.attacker import ATTACKS
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.targets import Targets


@ATTACKS.register("zoo_naive")
@dataclass(frozen=True)
class ZooNaive(ZooThief):
    """Naive zoo thief: a registered extraction attack sent with fixed targets."""

    min_accuracy: float = 0.0
    """the accuracy target sent with every batch, 0..1"""
    max_latency_ms: float | None = None
    """the latency target sent with every batch (ms); None: no limit"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fixed_targets()  # a ValueError names the bad target

    def fixed_targets(self) -> Targets:
        latency = math.inf if self.max_latency_ms is None else self.max_latency_ms
        return Targets(self.min_accuracy, latency)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        return self.extract(oracle, self.fixed_targets(), knowledge, rng)
