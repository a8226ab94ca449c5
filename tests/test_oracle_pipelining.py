"""``Oracle.query_all`` with batches in flight (:class:`arena.oracle.PipelinedEndpoint`).

The endpoint here is the harshest kind: it answers — and charges — every batch the moment it is
submitted, so a batch sent ahead that the sequential loop would not have sent shows up at once
in the ledger. Each case runs the same queries through a plain oracle (one batch at a time) and
a pipelining one, and both must answer, charge and fail alike; the pipelining one sends two
batches a call (:data:`arena.oracle.CALL_BYTES` is lowered to two batches' worth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from arena_testkit import ServiceFactory

from arena import oracle as oracle_module
from arena.data import DataSplits
from arena.errors import BudgetExhausted, InvalidQuery, QueryErrorCode
from arena.oracle import PIPELINE_DEPTH, Answer, Oracle, PendingAnswers, Rejection
from arena.oracle_adapters import ArgmaxOracle, OracleView
from arena.service import VictimService

ATTACKER = "thief"
BATCH = 16


class EagerEndpoint:
    """A pipelined endpoint that answers each batch as soon as it is submitted; with
    ``refuse_from`` its detector refuses every batch once that many queries were charged."""

    def __init__(self, service: VictimService, refuse_from: int | None = None) -> None:
        self.service = service
        self.refuse_from = refuse_from
        self.lose_answers_of_call: int | None = None
        """this call's batches are answered and charged, but the caller hears a fault"""
        self.submitted = 0
        self.batches_per_call: list[int] = []
        self.waiting = 0
        self.most_waiting = 0

    def answer(
        self, attacker_id: str, query_id: str, x: Any, targets: Any = None, work: Any = None
    ) -> Answer | Rejection:
        used = self.service.account_stats(attacker_id).used
        if self.refuse_from is not None and used >= self.refuse_from:
            return Rejection("refused", "flagged by the test detector")
        return self.service.answer(attacker_id, query_id, x, targets, work)

    def submit(
        self, attacker_id: str, batches: list[tuple[str, Any]], targets: Any = None
    ) -> PendingAnswers:
        results: list[Answer | Rejection] = []
        for query_id, x in batches:  # in order, up to the first rejection, as the victim does
            results.append(self.answer(attacker_id, query_id, x, targets))
            if isinstance(results[-1], Rejection):
                break
        if self.submitted == self.lose_answers_of_call:
            results = [Rejection("unavailable", "the test transport lost the answers")]
        self.submitted += 1
        self.batches_per_call.append(len(batches))
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)

        def wait() -> list[Answer | Rejection]:
            self.waiting -= 1
            return results

        return wait

    def pipelines(self) -> bool:
        return not self.service.order_sensitive()

    def work_challenge(self, attacker_id: str, query_id: str, batch: int) -> Any:
        return self.service.work_challenge(attacker_id, query_id, batch)

    def account_status(self, attacker_id: str) -> Any:
        return self.service.account_status(attacker_id)

    def public_spec(self) -> Any:
        return self.service.public_spec()


Setup = Callable[..., tuple[Oracle, EagerEndpoint]]


@pytest.fixture
def oracles(
    make_service: ServiceFactory, digits_data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> Setup:
    """``oracles(budget, pipelined, refuse_from=None, defenses=())``: an oracle on a fresh
    service behind an :class:`EagerEndpoint`, sending two full batches a call; not pipelined,
    the same endpoint without ``submit`` (so one batch at a time)."""
    batch_bytes = digits_data.test.x[:BATCH].numpy().nbytes
    monkeypatch.setattr(oracle_module, "CALL_BYTES", 2 * batch_bytes)

    def setup(
        budget: int, pipelined: bool, refuse_from: int | None = None, defenses: Any = ()
    ) -> tuple[Oracle, EagerEndpoint]:
        service = make_service(defenses, max_batch=BATCH)
        service.open_account(ATTACKER, budget)
        endpoint = EagerEndpoint(service, refuse_from)
        return Oracle(endpoint if pipelined else _Sequential(endpoint), ATTACKER), endpoint

    return setup


class _Sequential:
    """The eager endpoint without ``submit``: what a plain, one-batch-at-a-time oracle sees."""

    def __init__(self, inner: EagerEndpoint) -> None:
        self.answer = inner.answer
        self.work_challenge = inner.work_challenge
        self.account_status = inner.account_status
        self.public_spec = inner.public_spec


def _used(endpoint: EagerEndpoint) -> int:
    return endpoint.service.account_stats(ATTACKER).used


def test_pipelined_answers_equal_sequential_with_two_batches_in_flight(
    oracles: Setup, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:100]
    plain, _ = oracles(1000, pipelined=False)
    piped, endpoint = oracles(1000, pipelined=True)
    expected = plain.query_all(x)
    answered = piped.query_all(x)
    assert torch.equal(answered, expected)
    # 7 batches (six of 16, one of 4): two a call, the last alone
    assert endpoint.batches_per_call == [2, 2, 2, 1]
    assert endpoint.most_waiting == PIPELINE_DEPTH and endpoint.waiting == 0
    assert piped.used == _used(endpoint) == 100


def test_a_call_whose_answers_are_lost_is_asked_again_and_charged_once(
    oracles: Setup, digits_data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst fault: the victim charged and answered a whole call, then the answers were
    lost on the way back. Each batch is asked again by its query id, and the ledger answers it
    from its record without a second charge."""
    monkeypatch.setattr(oracle_module, "UNAVAILABLE_RETRY_PAUSES_S", (0.0, 0.0))
    x = digits_data.test.x[:100]
    plain, _ = oracles(1000, pipelined=False)
    piped, endpoint = oracles(1000, pipelined=True)
    endpoint.lose_answers_of_call = 1  # the second call: two batches, both charged
    assert torch.equal(piped.query_all(x), plain.query_all(x))
    assert piped.used == _used(endpoint) == 100
    assert endpoint.service.account_stats(ATTACKER).batches == 7


def test_a_stream_of_single_rows_goes_at_most_call_batches_a_call(
    oracles: Setup, digits_data: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oracle_module, "CALL_BATCHES", 5)  # 5 rows: well under CALL_BYTES
    oracle, endpoint = oracles(1000, pipelined=True)
    x = digits_data.test.x[:13]
    plain, _ = oracles(1000, pipelined=False)
    assert torch.equal(oracle.query_all(x, batch_size=1), plain.query_all(x, batch_size=1))
    assert endpoint.batches_per_call == [5, 5, 3]
    assert oracle.used == _used(endpoint) == len(x)


@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
def test_a_batch_beyond_the_budget_is_never_sent_ahead(
    oracles: Setup, digits_data: DataSplits, pipelined: bool
) -> None:
    oracle, endpoint = oracles(40, pipelined=pipelined)  # 2 batches of 16 fit, a third does not
    with pytest.raises(BudgetExhausted):  # and the last, of 8, must not be sent after it
        oracle.query_all(digits_data.test.x[:56])
    assert oracle.used == _used(endpoint) == 32
    assert endpoint.waiting == 0


@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
def test_an_invalid_batch_stops_the_stream_and_nothing_after_it_is_charged(
    oracles: Setup, digits_data: DataSplits, pipelined: bool
) -> None:
    x = digits_data.test.x[:64].clone()
    x[2 * BATCH + 3] = float("nan")  # the third batch
    oracle, endpoint = oracles(1000, pipelined=pipelined)
    with pytest.raises(InvalidQuery) as info:
        oracle.query_all(x)
    assert info.value.code == QueryErrorCode.NON_FINITE
    assert oracle.used == _used(endpoint) == 2 * BATCH


@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
def test_a_refusal_ends_the_stream_with_the_answered_prefix_and_no_lost_charge(
    oracles: Setup, digits_data: DataSplits, pipelined: bool
) -> None:
    oracle, endpoint = oracles(1000, pipelined=pipelined, refuse_from=3 * BATCH)
    x = digits_data.test.x[:100]
    answered = oracle.query_all(x, until_refused=True)
    assert answered.shape[0] == 3 * BATCH
    assert oracle.used == _used(endpoint) == 3 * BATCH
    assert endpoint.waiting == 0


def test_a_top1_view_streams_through_its_oracle_and_answers_as_batch_by_batch(
    oracles: Setup, digits_data: DataSplits
) -> None:
    x = digits_data.test.x[:100]
    oracle, endpoint = oracles(1000, pipelined=True)
    plain, _ = oracles(1000, pipelined=False)
    expected = torch.cat([ArgmaxOracle(plain).query(x[i : i + BATCH]) for i in range(0, 100, 16)])
    assert torch.equal(ArgmaxOracle(oracle).query_all(x), expected)
    assert endpoint.batches_per_call == [2, 2, 2, 1] and oracle.used == 100
    refused, endpoint = oracles(1000, pipelined=True, refuse_from=3 * BATCH)
    assert ArgmaxOracle(refused).query_all(x, until_refused=True).shape == (3 * BATCH, 10)


def test_views_proof_of_work_and_order_sensitive_victims_go_one_batch_at_a_time(
    oracles: Setup, digits_data: DataSplits
) -> None:
    oracle, endpoint = oracles(1000, pipelined=True)
    viewed = OracleView(oracle).query_all(digits_data.test.x[:40])  # a view's own query per batch
    assert endpoint.submitted == 0 and viewed.shape == (40, 10)
    worked, endpoint = oracles(1000, pipelined=True, defenses=("proof_of_work",))
    assert worked.query_all(digits_data.test.x[:40]).shape == (40, 10)
    assert endpoint.submitted == 0 and worked.work_hashes > 0
    # a detector's state follows the order of batches, which a restart could swap in flight
    watched, endpoint = oracles(1000, pipelined=True, defenses=("prada",))
    assert watched.query_all(digits_data.test.x[:40]).shape == (40, 10)
    assert endpoint.submitted == 0 and endpoint.service.order_sensitive()
