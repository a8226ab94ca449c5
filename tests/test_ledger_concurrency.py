"""B1/B2 in one process: the victim service's ledger is exact when many threads query at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import ServiceFactory, open_oracle

from arena.errors import BudgetExhausted
from arena.oracle import AccountStatus, Answer, InputSpec, Oracle, OutputSpec, Rejection
from arena.service import VictimService

SHAPE = (1, 8, 8)
THREADS = 8


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    """Start ``n`` threads together (barrier) and re-raise the first failure in the test."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def batch(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((size, *SHAPE), dtype=np.float32)


def test_separate_accounts_each_get_exactly_their_budget(make_service: ServiceFactory) -> None:
    service = make_service()
    answered: dict[int, list[int]] = {i: [] for i in range(THREADS)}
    refusals: dict[int, BudgetExhausted] = {}
    wrong_answers: list[int] = []
    oracles = [open_oracle(service, f"attacker-{i}", 100) for i in range(THREADS)]

    def attack(i: int) -> None:
        oracle = oracles[i]
        for k in range(10):
            x = torch.from_numpy(batch(30, seed=100 * i + k))
            try:
                out = oracle.query(x)
            except BudgetExhausted as exc:
                refusals[i] = exc
                return
            answered[i].append(int(out.shape[0]))
            expected = service.reference_outputs(x).defended
            if not np.allclose(out.numpy(), expected, atol=1e-6):
                wrong_answers.append(i)

    run_threads(attack)
    assert not wrong_answers, "a thread received answers to another thread's queries"
    for i in range(THREADS):
        assert answered[i] == [30, 30, 30]
        assert (refusals[i].requested, refusals[i].remaining) == (30, 10)
        assert oracles[i].used == 90
        stats = service.account_stats(f"attacker-{i}")
        assert (stats.budget, stats.used, stats.batches) == (100, 90, 3)
    # A batch that fits is still served after the refusal, down to exactly zero.
    assert oracles[0].query(torch.from_numpy(batch(10, seed=7))).shape == (10, 10)
    assert service.account_status("attacker-0").remaining == 0


def shared_identity_round(service: VictimService, attacker: str) -> tuple[list[Answer], int]:
    """8 threads, one attacker (budget 1000), 30 batches of 50 = 1,500 queries requested."""
    service.open_account(attacker, 1000)
    per_thread = [len(range(t, 30, THREADS)) for t in range(THREADS)]  # 4,4,4,4,4,4,3,3
    assert sum(per_thread) * 50 == 1500
    answers: list[Answer] = []
    refused = 0
    lock = threading.Lock()

    def attack(t: int) -> None:
        nonlocal refused
        for i in range(per_thread[t]):
            result = service.answer(attacker, f"t{t}-{i}", batch(50, seed=1000 * t + i))
            with lock:
                if isinstance(result, Answer):
                    answers.append(result)
                else:
                    assert result.code == "budget_exhausted", result
                    refused += 1

    run_threads(attack)
    return answers, refused


@pytest.mark.parametrize("repeat", range(20))
def test_B1_shared_identity_answers_exactly_the_budget(
    make_service: ServiceFactory, repeat: int
) -> None:
    service = make_service()
    attacker = f"shared-{repeat}"
    answers, refused = shared_identity_round(service, attacker)
    assert len(answers) == 20 and refused == 10
    assert sum(a.outputs.shape[0] for a in answers) == 1000
    # Charging was serialised: the running totals are exactly 50, 100, ..., 1000.
    assert sorted(a.used for a in answers) == list(range(50, 1001, 50))
    stats = service.account_stats(attacker)
    assert (stats.used, stats.batches) == (1000, 20)
    assert service.account_status(attacker).remaining == 0


def test_concurrent_replays_of_one_query_id_charge_once(make_service: ServiceFactory) -> None:
    service = make_service(["reverse_sigmoid"])
    service.open_account("retrier", 100)
    x = batch(40, seed=3)
    results: list[Answer | Rejection] = []

    def retry(_: int) -> None:
        for _ in range(5):
            results.append(service.answer("retrier", "q0", x))

    run_threads(retry)
    assert len(results) == 5 * THREADS
    assert all(isinstance(r, Answer) for r in results)
    first = results[0]
    assert isinstance(first, Answer)
    for r in results:
        assert isinstance(r, Answer)
        np.testing.assert_array_equal(r.outputs, first.outputs)
    stats = service.account_stats("retrier")
    assert (stats.used, stats.batches) == (40, 1)


class SlowEndpoint:
    """A victim endpoint with 20 ms of network latency (as a remote actor would have)."""

    def __init__(self, inner: VictimService) -> None:
        self.inner = inner

    def answer(self, attacker_id: str, query_id: str, x: Any) -> Answer | Rejection:
        time.sleep(0.02)
        return self.inner.answer(attacker_id, query_id, x)

    def account_status(self, attacker_id: str) -> AccountStatus:
        return self.inner.account_status(attacker_id)

    def public_spec(self) -> tuple[InputSpec, OutputSpec]:
        return self.inner.public_spec()


def test_one_oracle_shared_by_threads_answers_each_its_own_queries(
    make_service: ServiceFactory,
) -> None:
    service = make_service()
    service.open_account("threaded", 1000)
    oracle = Oracle(SlowEndpoint(service), "threaded")
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def attack(i: int) -> None:
        x = torch.from_numpy(batch(5, seed=i))
        results[i] = (x, oracle.query(x))

    run_threads(attack)
    assert service.account_stats("threaded").used == 5 * THREADS
    for x, out in results.values():
        expected = service.reference_outputs(x).defended
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
