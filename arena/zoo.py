"""Model zoos: several victims of one task behind one service, picked per batch by its targets.

Inference-serving systems keep a zoo of models and answer each request with the *cheapest model
that meets the caller's stated targets* (minimum accuracy, maximum latency), so a caller never
names the model it talks to (Sanyal et al., "Pareto-Secure Machine Learning: fingerprinting and
securing inference serving systems", 2023). This module is that victim kind:

- :class:`ZooModule` holds the members and their *profile* (test accuracy, and latency per
  request measured on this machine when the zoo was built) in registered buffers, so the victim
  cache, the Ray path and the service treat a zoo like any other victim. Its plain ``forward`` is
  the *reference* member's: the model the owner protects, against which the referee scores
  fidelity, utility and the victim's accuracy.
- :func:`select_member` is the selection policy. When no member meets both targets it is best
  effort: the most accurate member within the latency limit, else the fastest one; such a batch
  counts as a miss for goodput.
- :func:`benign_targets` draws the mixed targets of benign callers (each met by some member).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.targets import Targets

LATENCY_REPEATS = 200
"""timed single-image requests per member when a zoo is profiled (the median is kept)"""


@dataclass(frozen=True)
class ZooProfile:
    """What the serving layer knows of each member: accuracy and latency per request (ms)."""

    accuracy: tuple[float, ...]
    latency_ms: tuple[float, ...]
    reference: int

    @property
    def size(self) -> int:
        return len(self.accuracy)

    def meets(self, member: int, targets: Targets) -> bool:
        """Whether ``member`` honours ``targets`` (what goodput counts)."""
        return (
            self.accuracy[member] >= targets.min_accuracy
            and self.latency_ms[member] <= targets.max_latency_ms
        )


def select_member(profile: ZooProfile, targets: Targets) -> int:
    """The cheapest member meeting both targets; best effort when none does (see module doc)."""
    members = range(profile.size)
    feasible = [i for i in members if profile.meets(i, targets)]
    if feasible:
        return min(feasible, key=lambda i: (profile.latency_ms[i], -profile.accuracy[i], i))
    in_time = [i for i in members if profile.latency_ms[i] <= targets.max_latency_ms]
    if in_time:
        return max(in_time, key=lambda i: (profile.accuracy[i], -profile.latency_ms[i], -i))
    return min(members, key=lambda i: (profile.latency_ms[i], i))


class ZooModule(nn.Module):
    """The members of a zoo with their profile in buffers; ``forward`` is the reference member."""

    accuracy: torch.Tensor
    latency_ms: torch.Tensor
    reference_index: torch.Tensor

    def __init__(self, members: Sequence[nn.Module], profile: ZooProfile) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("accuracy", torch.tensor(profile.accuracy, dtype=torch.float64))
        self.register_buffer("latency_ms", torch.tensor(profile.latency_ms, dtype=torch.float64))
        self.register_buffer("reference_index", torch.tensor(profile.reference))

    def profile(self) -> ZooProfile:
        return ZooProfile(
            tuple(float(a) for a in self.accuracy.tolist()),
            tuple(float(t) for t in self.latency_ms.tolist()),
            int(self.reference_index),
        )

    def member(self, index: int) -> nn.Module:
        module: nn.Module = self.members[index]
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.member(int(self.reference_index))(x)
        return logits


@torch.no_grad()
def request_latency_ms(model: nn.Module, example: torch.Tensor) -> float:
    """Median wall time of a single-image request through ``model`` (after a warm-up)."""
    model.eval()
    one = example[:1]
    for _ in range(20):
        model(one)
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        model(one)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def benign_targets(profile: ZooProfile, count: int, rng: np.random.Generator) -> list[Targets]:
    """Mixed targets of benign callers, each met by at least one member.

    Minimum accuracy is uniform from 2 points below the least accurate member to the most
    accurate one; the latency limit is log-uniform from the fastest member's latency to twice the
    slowest one's. Draws no member can meet are redrawn, so an undefended zoo serves every
    benign request within its targets (goodput 1).
    """
    low_acc, high_acc = min(profile.accuracy) - 0.02, max(profile.accuracy)
    low_lat, high_lat = math.log(min(profile.latency_ms)), math.log(2 * max(profile.latency_ms))
    drawn: list[Targets] = []
    while len(drawn) < count:
        accuracy = float(np.clip(rng.uniform(low_acc, high_acc), 0.0, 1.0))
        latency = float(math.exp(rng.uniform(low_lat, high_lat)))
        targets = Targets(accuracy, latency)
        if any(profile.meets(i, targets) for i in range(profile.size)):
            drawn.append(targets)
    return drawn
