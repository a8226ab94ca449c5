"""Calibrated proof of work: a batch is answered (and charged) only with a solution of its own
challenge, a solution is consumed, a retried query id needs no new work, and callers whose
answers leak more pay more per query (Dziedzic et al., ICLR 2022)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from arena_testkit import ServiceFactory, match_spec

from arena import oracle as oracle_module
from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.defenses.proof_of_work import ProofOfWork, WorkState
from arena.errors import InvalidParameters, RejectionCode, VictimUnavailable
from arena.oracle import Answer, Oracle, Rejection
from arena.referee import play_match
from arena.registry import build_plugin
from arena.service import VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.work import WorkChallenge, WorkProof, solve

EASY = {"base_bits": 2, "max_bits": 8, "allowance": 0.0, "saturation": 0.2}
"""difficulties small enough for tests (at most 256 hashes a query)"""


@pytest.fixture()
def service(make_service: ServiceFactory) -> VictimService:
    service = make_service([PluginSpec(name="proof_of_work", params=EASY)])
    service.open_account("caller", 100)
    return service


def challenge(service: VictimService, query_id: str, batch: int) -> WorkChallenge:
    found = service.work_challenge("caller", query_id, batch)
    assert found is not None
    return found


def test_a_batch_without_or_with_a_wrong_solution_is_refused_uncharged(
    service: VictimService, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:5].numpy()
    missing = service.answer("caller", "q0", x)
    assert isinstance(missing, Rejection) and missing.code == RejectionCode.WORK_REQUIRED
    asked = challenge(service, "q0", 5)
    assert asked.count == 5 and asked.bits == EASY["base_bits"]
    wrong = WorkProof(asked.nonce, tuple(range(5)))  # counters not searched for
    solved = solve(asked)
    assert wrong.counters != solved.proof.counters or asked.bits == 0
    refused = service.answer("caller", "q0", x, work=WorkProof("0" * 32, solved.proof.counters))
    assert isinstance(refused, Rejection) and refused.code == RejectionCode.WORK_INVALID
    assert service.account_status("caller").used == 0
    assert isinstance(missing.to_error(), Exception) and "work_required" in str(missing.to_error())


def test_a_solution_is_consumed_and_fits_only_its_query_id_and_batch(
    service: VictimService, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:4].numpy()
    proof = solve(challenge(service, "q1", 4)).proof
    other = service.answer("caller", "q2", x, work=proof)  # another query id
    assert isinstance(other, Rejection) and other.code == RejectionCode.WORK_INVALID
    shorter = service.answer("caller", "q1", x[:3], work=proof)  # another batch
    assert isinstance(shorter, Rejection) and shorter.code == RejectionCode.WORK_INVALID
    assert isinstance(service.answer("caller", "q1", x, work=proof), Answer)
    challenge(service, "q3", 4)  # a pending challenge of its own does not help the old proof
    reused = service.answer("caller", "q3", x, work=proof)
    assert isinstance(reused, Rejection) and reused.code == RejectionCode.WORK_INVALID
    assert service.account_status("caller").used == 4


def test_a_solved_batch_is_charged_once_and_a_retry_needs_no_work(
    service: VictimService, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:6].numpy()
    first = service.answer("caller", "q0", x, work=solve(challenge(service, "q0", 6)).proof)
    assert isinstance(first, Answer) and first.used == 6
    assert service.work_challenge("caller", "q0", 6) is None  # charged: no new work
    again = service.answer("caller", "q0", x)
    assert isinstance(again, Answer) and again.used == 6
    assert (again.outputs == first.outputs).all()
    stats = service.account_stats("caller")
    assert stats.work_queries == 6 and stats.work_bits_sum == 6 * EASY["base_bits"]
    assert stats.work_hashes_expected == 6 * 2 ** EASY["base_bits"]


def test_the_oracle_solves_transparently_and_answers_are_unchanged(
    service: VictimService, make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    oracle = Oracle(service, "caller")
    assert oracle.output_spec.work_required
    answers = oracle.query_all(digits_data.test.x[:30], 10)
    plain = make_service()
    plain.open_account("caller", 100)
    assert torch.equal(answers, Oracle(plain, "caller").query_all(digits_data.test.x[:30], 10))
    assert oracle.used == 30 and oracle.work_hashes >= 30 and oracle.work_seconds > 0


def test_the_oracle_asks_again_when_the_victim_forgot_its_challenge(
    service: VictimService, digits_data: DataSplits
) -> None:
    """A victim restarted between challenge and answer knows no challenge: one new one."""

    class Forgetful:
        def __init__(self) -> None:
            self.forgot = False

        def __getattr__(self, name: str) -> Any:
            return getattr(service, name)

        def answer(self, *args: Any, **kwargs: Any) -> Answer | Rejection:
            if not self.forgot:
                self.forgot = True
                service._challenges.clear()  # what a restart loses
            return service.answer(*args, **kwargs)

    oracle = Oracle(Forgetful(), "caller")
    assert len(oracle.query(digits_data.test.x[:3])) == 3
    assert service.account_status("caller").used == 3


def test_the_oracle_asks_again_when_the_challenge_went_unanswered(
    service: VictimService, digits_data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A victim down while the challenge is asked is retried like a batch it did not answer,
    and gives up with the same typed error when it stays down."""
    monkeypatch.setattr(oracle_module, "UNAVAILABLE_RETRY_PAUSES_S", (0.0, 0.0))

    class Restarting:
        def __init__(self, outages: int) -> None:
            self.outages = outages

        def __getattr__(self, name: str) -> Any:
            return getattr(service, name)

        def work_challenge(self, *args: Any) -> WorkChallenge | None:
            if self.outages:
                self.outages -= 1
                raise VictimUnavailable("the victim service is down: restarting")
            return service.work_challenge(*args)

    oracle = Oracle(Restarting(outages=2), "caller")
    assert len(oracle.query(digits_data.test.x[:3])) == 3
    assert service.account_status("caller").used == 3
    with pytest.raises(VictimUnavailable, match="restarting"):
        Oracle(Restarting(outages=3), "caller").query(digits_data.test.x[3:6])
    assert service.account_status("caller").used == 3  # nothing charged for it


def test_difficulty_grows_with_the_leak_estimate() -> None:
    defense = ProofOfWork(**EASY)
    state = defense.new_state()
    assert defense.work_bits(state, 10) == EASY["base_bits"]
    certain = torch.eye(10).repeat(2, 1)
    defense.respond(certain, torch.zeros(20, 4), state)
    assert defense.work_bits(state, 10) == EASY["base_bits"]
    uniform = torch.full((20, 10), 0.1)
    defense.respond(uniform, torch.zeros(20, 4), state)
    assert isinstance(state, WorkState) and state.mean_leak == pytest.approx(0.5)
    assert defense.work_bits(state, 10) == EASY["max_bits"]
    assert torch.equal(defense.respond(uniform, torch.zeros(20, 4), state), uniform)


def test_natural_leak_within_the_allowance_costs_only_base_bits() -> None:
    defense = ProofOfWork(base_bits=4, max_bits=12, allowance=0.1, saturation=0.3)
    state = WorkState(seen=100, leaked=8.0)  # mean 0.08: within the allowance
    assert defense.work_bits(state, 1) == 4
    state = WorkState(seen=100, leaked=20.0)  # halfway from allowance to saturation
    assert defense.work_bits(state, 1) == 8


@pytest.mark.parametrize(
    "params",
    [
        {"base_bits": -1},
        {"max_bits": 40},
        {"base_bits": 6, "max_bits": 4},
        {"saturation": 0.0},
        {"saturation": 1.5},
        {"allowance": 0.3, "saturation": 0.2},
        {"allowance": -0.1},
        {"base_bits": 2.5},
    ],
)
def test_bad_parameters_raise(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, "proof_of_work", params)


def test_a_thief_pays_more_per_query_than_a_benign_caller(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    """Noise queries leak far more than natural test images (entropy 0.3 against 0.07 under the
    digits victim): after its first batch the thief pays ``max_bits``, the benign caller (same
    volume, same batches) stays at ``base_bits``; work is timed, so the margin is wide."""
    params = {"epochs": 2, "query_batch": 50}
    work = PluginSpec(name="proof_of_work", params={"base_bits": 2, "max_bits": 9})
    spec = match_spec(digits_victim_spec, [work], "random_queries", params, budget=300)
    result = play_match(spec, digits_data, victim_cache)
    assert result.work_bits_per_query == pytest.approx((50 * 2 + 250 * 9) / 300)
    assert result.benign_work_seconds_per_query is not None
    assert result.work_cost_ratio is not None and result.work_cost_ratio > 5, result
    assert result.benign_flagged is None  # not a detector
