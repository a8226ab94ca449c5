"""Benign traffic: an honest caller beside the thief, so a detector's false positives show, and
so does what proof of work costs an honest caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from arena.match_data import MatchData
from arena.oracle import Oracle
from arena.seeds import match_rng
from arena.service import AccountStats
from arena.specs import MatchSpec

if TYPE_CHECKING:
    from arena.service import ServiceAPI

BENIGN_BATCH = 256


@dataclass(frozen=True)
class BenignRun:
    """The benign caller's account as the service kept it, and its client-side work time."""

    stats: AccountStats
    work_seconds: float
    """seconds it spent solving proof-of-work puzzles (0 when the victim asks for none)"""


def benign_traffic(spec: MatchSpec, service: ServiceAPI, data: MatchData) -> BenignRun:
    """A benign caller of the same volume as the attack: test images in random order.

    It has its own account (and so its own detector and work state), so whether it gets flagged
    is the detector's false-positive behaviour, and its work what an honest caller pays,
    independent of the thief playing the same match.
    """
    identity = f"benign-{spec.key()}"
    service.open_account(identity, spec.budget)
    rng = match_rng(spec, "benign")
    n_test = int(data.test_x.shape[0])
    order = np.concatenate([rng.permutation(n_test) for _ in range(-(-spec.budget // n_test))])
    oracle = Oracle(service, identity)
    oracle.query_all(
        data.test_x[torch.from_numpy(order[: spec.budget])], BENIGN_BATCH, until_refused=True
    )
    return BenignRun(service.account_stats(identity), oracle.work_seconds)
