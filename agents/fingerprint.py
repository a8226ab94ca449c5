"""Fingerprinting a model zoo, then extracting the member it pins (Sanyal et al., 2023).

A model zoo answers each batch with the cheapest member meeting the batch's targets, so a thief
cannot name the model it steals. This thief first *fingerprints* the zoo: it sends a few fixed
probe images with different accuracy targets (no latency limit) and tells members apart by their
answers, which differ between models on the same images. Along the accuracy axis the zoo's choice
is a step function: each member serves an interval of targets. Bisection between two targets
that drew different answers finds every boundary to within ``resolution`` in about
``log2(1 / resolution)`` requests per boundary. Members are ranked by where their answers were
seen (least to most accurate), the ``target_rank`` one is chosen, and the targets sent from then
on are the middle of the widest interval it answered, the one most robust to noise on the
targets. ``checks`` requests at the one or two best candidate targets measure how consistently
they reach the chosen member; the most consistent wins. Every probe is charged like any query.

Then any registered extraction attack (``extraction``, default Knockoff) runs on the remaining
budget with those targets on every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents._zoo import ZooThief
from arena.attacker import ATTACKS
from arena.errors import BudgetExhausted
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.targets import Targets
from arena.validation import check_integer, check_number

SIGNATURE_DECIMALS = 4
"""answers are compared rounded to this many decimals"""


@dataclass(frozen=True)
class Observation:
    """One probe request: the accuracy target sent and the answer's signature."""

    accuracy: float
    signature: bytes


@ATTACKS.register("fingerprint")
@dataclass(frozen=True)
class Fingerprint(ZooThief):
    """Fingerprints a model zoo to pin one member, then extracts it with a registered attack."""

    target_rank: int = -1
    """the member wanted, among those found from the least to the most accurate (-1: the most
    accurate, 0: the least)"""
    probes: int = 4
    """probe images per fingerprinting request"""
    resolution: float = 0.005
    """accuracy-target resolution of the boundary search"""
    max_requests: int = 40
    """fingerprinting requests at most (each costs ``probes`` queries)"""
    checks: int = 3
    """requests per candidate target spent measuring consistency"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("probes", self.probes, low=1)
        check_integer("max_requests", self.max_requests, low=2)
        check_integer("checks", self.checks, low=0)
        check_integer("target_rank", self.target_rank)
        check_number("resolution", self.resolution, low=0, high=0.5, low_open=True, high_open=True)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None  # Attacker.steal checked the threat model
        pool = knowledge.pool
        rows = rng.choice(int(pool.shape[0]), min(self.probes, int(pool.shape[0])), replace=False)
        probe = pool[torch.from_numpy(rows)]
        targets = self.fingerprint(oracle, probe)
        return self.extract(oracle, targets, knowledge, rng)

    # ---- fingerprinting ---------------------------------------------------------------------

    def fingerprint(self, oracle: Oracle, probe: torch.Tensor) -> Targets:
        """Targets that pin the chosen member (see the module doc); unlimited latency."""
        observations = self.search(oracle, probe)
        chosen = self.chosen_signature(observations)
        candidates = candidate_targets(observations, chosen)[:2]
        if self.checks == 0 or len(candidates) == 1:
            return Targets(candidates[0])
        best, best_hits = candidates[0], -1
        for accuracy in candidates:
            hits = 0
            for _ in range(self.checks):
                seen = self.observe(oracle, probe, accuracy)
                hits += seen is not None and seen.signature == chosen
            if hits > best_hits:
                best, best_hits = accuracy, hits
        return Targets(best)

    def observe(self, oracle: Oracle, probe: torch.Tensor, accuracy: float) -> Observation | None:
        """One probe request at ``accuracy`` (no latency limit); ``None`` once the budget is out."""
        try:
            answers = oracle.query(probe, Targets(accuracy, math.inf))
        except BudgetExhausted:
            return None
        signature = np.round(answers.numpy(), SIGNATURE_DECIMALS).tobytes()
        return Observation(accuracy, signature)

    def search(self, oracle: Oracle, probe: torch.Tensor) -> list[Observation]:
        """Bisection over the accuracy target between observations with different answers."""
        seen: dict[float, Observation] = {}
        for accuracy in (0.0, 1.0):
            if (found := self.observe(oracle, probe, accuracy)) is not None:
                seen[accuracy] = found
        if len(seen) < 2:
            return list(seen.values())
        pending = [(0.0, 1.0)]
        while pending and len(seen) < self.max_requests:
            low, high = pending.pop(0)  # breadth first: every boundary gets found coarsely
            if seen[low].signature == seen[high].signature or high - low <= self.resolution:
                continue
            middle = (low + high) / 2
            found = self.observe(oracle, probe, middle)
            if found is None:
                break
            seen[middle] = found
            pending += [(low, middle), (middle, high)]
        return [seen[a] for a in sorted(seen)]

    def chosen_signature(self, observations: list[Observation]) -> bytes:
        """The ``target_rank``-th member, members ranked by the median target they answered."""
        by_member: dict[bytes, list[float]] = {}
        for seen in observations:
            by_member.setdefault(seen.signature, []).append(seen.accuracy)
        ranked = sorted(by_member, key=lambda s: float(np.median(by_member[s])))
        rank = max(-len(ranked), min(self.target_rank, len(ranked) - 1))
        return ranked[rank]


def candidate_targets(observations: list[Observation], chosen: bytes) -> list[float]:
    """Middles of the runs of consecutive observations answered by ``chosen``, widest first.

    A run's interval reaches to the neighbouring observations that drew another member (or to
    0 and 1 at the ends of the axis), so its middle is the target farthest from any boundary.
    """
    runs: list[tuple[float, float]] = []
    for i, seen in enumerate(observations):
        if seen.signature != chosen:
            continue
        if i > 0 and observations[i - 1].signature == chosen:
            continue  # inside a run already counted
        end = i
        while end + 1 < len(observations) and observations[end + 1].signature == chosen:
            end += 1
        low = observations[i - 1].accuracy if i > 0 else 0.0
        high = observations[end + 1].accuracy if end + 1 < len(observations) else 1.0
        runs.append((low, high))
    runs.sort(key=lambda r: r[1] - r[0], reverse=True)
    return [(low + high) / 2 for low, high in runs]
