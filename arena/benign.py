"""Benign traffic: an honest caller beside the thief, so a detector's false positives show."""

from __future__ import annotations

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


def benign_traffic(spec: MatchSpec, service: ServiceAPI, data: MatchData) -> AccountStats:
    """A benign caller of the same volume as the attack: test images in random order.

    It has its own account (and so its own detector state), so whether it gets flagged is the
    detector's false-positive behaviour, independent of the thief playing the same match.
    """
    identity = f"benign-{spec.key()}"
    service.open_account(identity, spec.budget)
    rng = match_rng(spec, "benign")
    n_test = int(data.test_x.shape[0])
    order = np.concatenate([rng.permutation(n_test) for _ in range(-(-spec.budget // n_test))])
    Oracle(service, identity).query_all(
        data.test_x[torch.from_numpy(order[: spec.budget])], BENIGN_BATCH, until_refused=True
    )
    return service.account_stats(identity)
