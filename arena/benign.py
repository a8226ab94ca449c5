"""Benign traffic: honest callers beside the thief, so a detector's false positives show.

Each caller has its own account (and so its own detector state): whether one gets flagged is the
detector's false-positive behaviour, and its proof-of-work time what an honest caller pays,
independent of the thief playing the same match. Without a
:class:`~arena.specs.BenignSpec` a match has one caller, streaming the test images in random
order at batch 256, as many as the budget; with one, a population: several callers, their own
random orders and batch sizes, some streaming only the images nearest the victim's class
boundaries (the most ambiguous honest traffic, the likeliest to look like a thief's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from arena.match_data import MatchData
from arena.oracle import Oracle
from arena.seeds import match_rng
from arena.service import AccountStats
from arena.specs import BenignSpec, MatchSpec

if TYPE_CHECKING:
    from arena.service import ServiceAPI

BENIGN_BATCH = 256
"""the batch size of the single default caller"""
BOUNDARY_SHARE = 0.2
"""a boundary caller streams this share of the test set: the images with the smallest margin
between the victim's top two probabilities"""


@dataclass(frozen=True)
class BenignRun:
    """A benign caller's account as the service kept it, and its client-side work time."""

    stats: AccountStats
    work_seconds: float
    """seconds it spent solving proof-of-work puzzles (0 when the victim asks for none)"""


def benign_traffic(
    spec: MatchSpec, service: ServiceAPI, data: MatchData, victim_probs: torch.Tensor
) -> list[BenignRun]:
    """Play the match's benign callers against ``service``; their accounts as the service kept
    them and their work time, in caller order. ``victim_probs``: the undefended victim's
    probabilities on the test set, which rank the images by how near a class boundary they lie."""
    rng = match_rng(spec, "benign")
    if spec.benign is None:
        identity = f"benign-{spec.key()}"
        everything = np.arange(int(data.test_x.shape[0]))
        return [_stream(service, identity, data, everything, spec.budget, BENIGN_BATCH, rng)]
    return _population(spec, spec.benign, service, data, victim_probs, rng)


def _population(
    spec: MatchSpec,
    benign: BenignSpec,
    service: ServiceAPI,
    data: MatchData,
    victim_probs: torch.Tensor,
    rng: np.random.Generator,
) -> list[BenignRun]:
    """Every caller of a :class:`BenignSpec`, each with its own stream of the match's seed,
    sending each of its images at most once (fewer queries than asked when it has fewer)."""
    everything = np.arange(int(data.test_x.shape[0]))
    boundary = near_boundary(victim_probs, BOUNDARY_SHARE)
    queries = benign.queries or spec.budget
    first_boundary = benign.callers - benign.boundary_callers
    callers = []
    for i, stream in enumerate(rng.spawn(benign.callers)):
        images = boundary if i >= first_boundary else everything
        # an honest caller asks about each image once: repeats would be exact duplicates, which
        # similarity detectors flag for reasons no real user gives them
        size = min(queries, len(images))
        batch = benign.batch_sizes[i % len(benign.batch_sizes)]
        identity = f"benign-{i}-{spec.key()}"
        callers.append(_stream(service, identity, data, images, size, batch, stream))
    return callers


def near_boundary(probs: torch.Tensor, share: float) -> np.ndarray:
    """Indices of the ``share`` of rows with the smallest top-two probability margin."""
    top = probs.topk(2, dim=1).values
    margins = (top[:, 0] - top[:, 1]).numpy()
    count = max(1, round(share * len(margins)))
    return np.argsort(margins, kind="stable")[:count]


def _stream(
    service: ServiceAPI,
    identity: str,
    data: MatchData,
    images: np.ndarray,
    queries: int,
    batch: int,
    rng: np.random.Generator,
) -> BenignRun:
    """One caller: ``queries`` of ``images`` in random order (reshuffled whenever it runs out),
    sent in batches of ``batch`` until done or refused."""
    service.open_account(identity, queries)
    rounds = -(-queries // len(images))
    order = np.concatenate([images[rng.permutation(len(images))] for _ in range(rounds)])
    oracle = Oracle(service, identity)
    oracle.query_all(data.test_x[torch.from_numpy(order[:queries])], batch, until_refused=True)
    return BenignRun(service.account_stats(identity), oracle.work_seconds)
