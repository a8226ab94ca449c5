"""Model zoos' goodput: how well the service still serves benign callers who state targets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from arena.match_data import MatchData
from arena.oracle import Oracle
from arena.seeds import match_rng
from arena.specs import MatchSpec
from arena.zoo import ZooProfile, benign_targets

if TYPE_CHECKING:
    from arena.service import ServiceAPI

GOODPUT_REQUESTS = 200
GOODPUT_BATCH = 8


def zoo_goodput(
    spec: MatchSpec, service: ServiceAPI, data: MatchData, profile: ZooProfile
) -> float:
    """Goodput: a benign caller sends :data:`GOODPUT_REQUESTS` requests of test images, each with
    its own targets (:func:`arena.zoo.benign_targets`); the share of its queries answered by a
    member meeting the targets it stated. Its own account keeps it apart from the thief."""
    identity = f"goodput-{spec.key()}"
    service.open_account(identity, GOODPUT_REQUESTS * GOODPUT_BATCH)
    rng = match_rng(spec, "goodput")
    oracle = Oracle(service, identity)
    n_test = int(data.test_x.shape[0])
    for targets in benign_targets(profile, GOODPUT_REQUESTS, rng):
        rows = torch.from_numpy(rng.choice(n_test, GOODPUT_BATCH, replace=False))
        oracle.query(data.test_x[rows], targets)
    stats = service.account_stats(identity)
    return stats.targets_met / max(stats.used, 1)
