"""How the victim service treats detectors, with a test-only detector that flags a caller after a
fixed number of queries: refusals charge nothing, state is per caller, the count is exact, and a
chain accounts each defense's time and perturbation separately."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from arena.data import DataSplits
from arena.defenses import DEFENSES, DefenseChain
from arena.defenses.base import Defense
from arena.errors import QueryRefused
from arena.oracle import InputSpec, Oracle, Rejection
from arena.registry import build_plugin
from arena.service import VictimService
from arena.victims import TrainedVictim


@dataclass
class Counter:
    seen: int = 0
    flagged_at: int | None = None


@dataclass(frozen=True)
class FlagAfter(Defense):
    """Flags a caller once it has sent ``after`` queries; refuses it afterwards if ``refuse``."""

    stateful = True
    detector = True
    after: int = 100
    refuse: bool = True

    def new_state(self) -> Counter:
        return Counter()

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        state.seen += len(probs)
        if state.flagged_at is None and state.seen >= self.after:
            state.flagged_at = state.seen
        return probs

    def refusal(self, state: Any) -> str | None:
        return "flagged as a thief" if self.refuse and state.flagged_at is not None else None

    def detected_after(self, state: Any) -> int | None:
        flagged: int | None = state.flagged_at
        return flagged


def service_with(
    defenses: tuple[Defense, ...], victim: TrainedVictim, data: DataSplits
) -> VictimService:
    spec = InputSpec(shape=data.input_shape)
    return VictimService(victim.model, DefenseChain(defenses), spec, data.num_classes)


def test_a_flagged_caller_is_refused_without_charge_and_others_are_not(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    service = service_with((FlagAfter(after=100),), digits_victim, digits_data)
    x = digits_data.test.x
    for caller in ("thief", "bystander"):
        service.open_account(caller, 1000)
    thief, bystander = Oracle(service, "thief"), Oracle(service, "bystander")
    thief.query(x[:64])
    bystander.query(x[:64])
    thief.query(x[64:128])  # 128 >= 100: answered, and flagged from now on
    with pytest.raises(QueryRefused, match="flagged"):
        thief.query(x[128:192])
    rejected = service.answer("thief", "raw-1", x[128:192].numpy())
    assert isinstance(rejected, Rejection) and rejected.code == "refused"
    stats = service.account_stats("thief")
    assert stats.used == 128 and stats.detected_after == 128 and stats.refused_batches == 2
    # the bystander shares the service, not the thief's state
    assert bystander.query(x[64:96]).shape == (32, 10)
    other = service.account_stats("bystander")
    assert other.used == 96 and other.detected_after is None and other.refused_batches == 0


def test_query_all_until_refused_keeps_what_was_answered(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    service = service_with((FlagAfter(after=100),), digits_victim, digits_data)
    service.open_account("thief", 1000)
    oracle = Oracle(service, "thief")
    with pytest.raises(QueryRefused):
        oracle.query_all(digits_data.test.x[:300], batch_size=64)
    fresh = service_with((FlagAfter(after=100),), digits_victim, digits_data)
    fresh.open_account("thief", 1000)
    answers = Oracle(fresh, "thief").query_all(
        digits_data.test.x[:300], batch_size=64, until_refused=True
    )
    assert answers.shape == (128, 10)
    assert fresh.account_stats("thief").used == 128


def test_flag_only_detector_keeps_answering_and_records_the_count(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    service = service_with((FlagAfter(after=50, refuse=False),), digits_victim, digits_data)
    service.open_account("thief", 400)
    answers = Oracle(service, "thief").query_all(digits_data.test.x[:300], batch_size=40)
    assert answers.shape == (300, 10)
    assert service.account_stats("thief").detected_after == 80


def test_chain_accounts_each_defense_separately(
    digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    perturbing = build_plugin(DEFENSES, "reverse_sigmoid", {})
    service = service_with((FlagAfter(after=10**6), perturbing), digits_victim, digits_data)
    service.open_account("a", 256)
    Oracle(service, "a").query_all(digits_data.test.x[:256], batch_size=64)
    stats = service.account_stats("a")
    assert stats.step_l1_sum[0] == 0.0 and stats.step_l1_sum[1] > 0
    assert stats.step_l1_sum[1] == pytest.approx(stats.l1_sum, rel=1e-4)
    assert all(s > 0 for s in stats.step_seconds)
    assert sum(stats.step_seconds) == pytest.approx(stats.defense_seconds)
