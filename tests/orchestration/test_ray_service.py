"""The victim service hosted in a Ray actor: same answers and errors as in process, exact ledgers
under concurrent attackers (B1, B3), typed errors returned through Ray (Q1: 10,000 malformed
queries, nothing charged, no restart)."""

from __future__ import annotations

import contextlib
import os
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

import agents  # noqa: F401
from arena import oracle as oracle_module
from arena.data import DataSplits
from arena.errors import BudgetExhausted, InvalidQuery, QueryErrorCode
from arena.match_data import MatchData
from arena.oracle import InputSpec, Oracle, Rejection
from arena.referee import play_match, referee_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.testing.malformed import malformed_queries, valid_batch
from arena.victims import load_or_train
from orchestration.ray_service import RayServiceProxy, start_victim_service

pytestmark = pytest.mark.ray

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)


@pytest.fixture(scope="module")
def service(ray_session: None, digits: DataSplits, cache_dir: Path) -> Any:
    victim = load_or_train(VICTIM, digits, cache_dir)
    handle = start_victim_service(
        VICTIM,
        (PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2}),),
        ray.put(victim.model.state_dict()),
        InputSpec(shape=digits.input_shape, max_batch=64),
        digits.num_classes,
    )
    yield handle
    ray.kill(handle)


def test_Q1_ray_oracle_rejects_malformed_queries_and_charges_nothing(service: Any) -> None:
    proxy = RayServiceProxy(service)
    proxy.open_account("malformed", 50)
    oracle = Oracle(proxy, "malformed")
    bad: list[tuple[Any, QueryErrorCode]] = [
        (None, QueryErrorCode.NOT_ARRAY),
        ([[0.0] * 64], QueryErrorCode.NOT_ARRAY),
        (torch.zeros(2, 1, 8, 8, dtype=torch.float64), QueryErrorCode.DTYPE),
        (torch.zeros(2, 8, 8), QueryErrorCode.SHAPE),
        (torch.zeros(0, 1, 8, 8), QueryErrorCode.EMPTY),
        (torch.zeros(65, 1, 8, 8), QueryErrorCode.BATCH_TOO_LARGE),
        (torch.full((2, 1, 8, 8), float("nan")), QueryErrorCode.NON_FINITE),
        (torch.full((2, 1, 8, 8), 2.0), QueryErrorCode.OUT_OF_RANGE),
    ]
    for x, code in bad:
        with pytest.raises(InvalidQuery) as info:
            oracle.query(x)
        assert info.value.code == code
    assert oracle.used == 0 and proxy.account_stats("malformed").used == 0
    with pytest.raises(BudgetExhausted):
        oracle.query(torch.zeros(51, 1, 8, 8))
    assert proxy.account_stats("malformed").used == 0
    out = oracle.query(torch.rand(50, 1, 8, 8))
    assert out.shape == (50, 10) and torch.allclose(out.sum(dim=1), torch.ones(50), atol=1e-5)
    assert oracle.remaining == 0


MAX_BATCH = 64  # the module's victim service


def _digits(batch: int) -> np.ndarray:
    return valid_batch(batch, (1, 8, 8))


Q1_KINDS = malformed_queries((1, 8, 8), MAX_BATCH)
Q1_QUERIES = 10_000
IN_FLIGHT = 16
"""malformed queries pipelined at once (the actor still serves them one at a time)"""
LATENCY_CALLS = 100
LATENCY_BATCH = 4


def _actor_process(handle: Any) -> tuple[int, str, int]:
    """(pid, actor id, restarts) of a victim actor. Test-only introspection: the pid is read
    inside the actor, the restart count from Ray's actor table (the state API needs the
    dashboard, which the session's Ray leaves out)."""
    pid, actor_id = ray.get(
        handle.__ray_call__.remote(
            lambda _self: (os.getpid(), ray.get_runtime_context().get_actor_id())
        )
    )
    record: dict[str, Any] = ray._private.state.actors(actor_id)
    assert record["State"] == "ALIVE" and record["Pid"] == pid
    return pid, actor_id, int(record["NumRestarts"])


def _send_valid(oracle: Oracle) -> None:
    """LATENCY_CALLS valid queries through the oracle (one Ray round trip each), all answered."""
    for i in range(LATENCY_CALLS):
        x = torch.from_numpy(_digits(LATENCY_BATCH)) * (i % 7 + 1) / 8  # distinct, in range
        assert oracle.query(x).shape == (LATENCY_BATCH, 10)


@pytest.mark.timeout(120)
def test_Q1_10000_malformed_queries_rejected_typed_uncharged_no_restart(service: Any) -> None:
    """Q1: 10,000 malformed queries of 29 kinds sent to the Ray-hosted victim: every one comes
    back as the typed error of its kind, nothing is charged, the actor is the same process
    afterwards and still answers. (That valid queries are no slower afterwards is a speed
    target: ``benchmarks/malformed_flood.py`` measures it.)"""
    proxy = RayServiceProxy(service)
    budget = 2 * (LATENCY_CALLS + 10) * LATENCY_BATCH
    proxy.open_account("q1", budget)
    oracle = Oracle(proxy, "q1")
    pid_before, actor_id, restarts_before = _actor_process(service)
    for _ in range(10):  # warm-up, not measured
        oracle.query(torch.from_numpy(_digits(LATENCY_BATCH)) / 2)
    _send_valid(oracle)
    used_before = proxy.account_stats("q1").used
    assert used_before == (LATENCY_CALLS + 10) * LATENCY_BATCH

    # every kind once through the attacker's oracle: raised as the typed error with its code
    for case in Q1_KINDS:
        with pytest.raises(InvalidQuery) as info:
            oracle.query(case.make())
        assert info.value.code is case.code, case.kind

    # then 10,000 straight at the actor, IN_FLIGHT at a time: a rejection value each
    payloads = [(case.kind, case.make(), case.code) for case in Q1_KINDS]
    seen: Counter[str] = Counter()
    pending: dict[Any, tuple[str, QueryErrorCode]] = {}
    start = time.perf_counter()

    def collect(refs: list[Any]) -> None:
        for ref, result in zip(refs, ray.get(refs), strict=True):
            kind, code = pending.pop(ref)
            assert isinstance(result, Rejection), f"{kind} was answered"
            error = result.to_error()
            assert isinstance(error, InvalidQuery) and error.code is code, (kind, result)
            seen[kind] += 1

    for i in range(Q1_QUERIES):
        kind, payload, code = payloads[i % len(payloads)]
        pending[service.answer.remote("q1", f"bad-{i}", payload)] = (kind, code)
        if len(pending) >= IN_FLIGHT:
            ready, _ = ray.wait(list(pending), num_returns=IN_FLIGHT // 2)
            collect(ready)
    collect(list(pending))
    flood = time.perf_counter() - start
    assert sum(seen.values()) == Q1_QUERIES and set(seen) == {case.kind for case in Q1_KINDS}

    stats = proxy.account_stats("q1")
    assert stats.used == used_before, "a malformed query was charged"
    assert stats.batches == LATENCY_CALLS + 10
    assert _actor_process(service) == (pid_before, actor_id, restarts_before)
    assert restarts_before == 0

    _send_valid(oracle)
    print(
        f"Q1: {Q1_QUERIES} malformed queries of {len(Q1_KINDS)} kinds rejected in {flood:.1f} s "
        f"({flood / Q1_QUERIES * 1e3:.2f} ms each, {IN_FLIGHT} in flight)"
    )
    assert proxy.account_stats("q1").used == used_before + LATENCY_CALLS * LATENCY_BATCH


@pytest.mark.timeout(60)
def test_Q2_oversized_tensor_view_refused_through_ray_without_a_copy(service: Any) -> None:
    """Q2 through Ray: a 25.6 GB expanded tensor view travels as its tiny storage, is refused on
    its shape alone (the message names expected and got), and nothing is charged."""
    proxy = RayServiceProxy(service)
    proxy.open_account("q2", 10)
    oracle = Oracle(proxy, "q2")
    huge = torch.zeros(1, 1, 8, 8).expand(10**8, 1, 8, 8)
    start = time.perf_counter()
    with pytest.raises(InvalidQuery) as info:
        oracle.query(huge)
    elapsed = time.perf_counter() - start
    print(f"Q2 through Ray: 10^8-image view refused in {elapsed * 1e3:.1f} ms")
    assert info.value.code is QueryErrorCode.BATCH_TOO_LARGE
    assert str(MAX_BATCH) in info.value.message and str(10**8) in info.value.message
    assert elapsed < 2.0
    assert proxy.account_stats("q2").used == 0


def test_Q2_oversized_numpy_view_refused_through_ray_without_a_copy(service: Any) -> None:
    """Q2 through Ray with a numpy view: pickling materialises a zero-stride array on the
    caller's side (about twice its full size at peak), so a 10^8-image view would need 50 GB
    there; refusing it on its shape before the Ray call would allocate nothing."""
    proxy = RayServiceProxy(service)
    proxy.open_account("q2-numpy", 10)
    view = np.broadcast_to(np.zeros((1, 1, 8, 8), np.float32), (2 * 10**5, 1, 8, 8))  # 51 MB
    tracemalloc.start()
    try:
        result = proxy.answer("q2-numpy", "q0", view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, Rejection) and result.code == "batch_too_large"
    assert proxy.account_stats("q2-numpy").used == 0
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a 51 MB view"


class _CountingProxy(RayServiceProxy):
    """The proxy, counting the batches an oracle sent ahead in each call."""

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.batches_per_call: list[int] = []

    def submit(self, attacker_id: str, batches: list[tuple[str, Any]], targets: Any = None) -> Any:
        self.batches_per_call.append(len(batches))
        return super().submit(attacker_id, batches, targets)


def test_pipelined_query_all_through_the_actor_is_exact_and_in_order(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``query_all`` sends four batches a call, two calls in flight on the actor: the same
    answers as one batch at a time, each query charged once, and the audit log in the order the
    batches were sent."""
    x = torch.from_numpy(_digits(10 * MAX_BATCH + 7))
    monkeypatch.setattr(oracle_module, "CALL_BYTES", 4 * x[:MAX_BATCH].numpy().nbytes)
    proxy = _CountingProxy(service)
    proxy.open_account("one-by-one", 10**4)
    proxy.open_account("pipelined", 10**4)
    one_by_one = Oracle(proxy, "one-by-one")
    expected = torch.cat([one_by_one.query(x[i : i + MAX_BATCH]) for i in range(0, len(x), 64)])
    assert proxy.batches_per_call == []
    pipelined = Oracle(proxy, "pipelined")
    assert torch.equal(pipelined.query_all(x), expected)
    assert proxy.batches_per_call == [4, 4, 3]
    assert pipelined.used == proxy.account_stats("pipelined").used == len(x)
    query_ids = ray.get(
        service.__ray_call__.remote(
            lambda victim: [
                query_id
                for (query_id,) in victim._ledger._db.execute(
                    "SELECT query_id FROM audit WHERE attacker = 'pipelined' ORDER BY seq"
                )
            ]
        )
    )
    assert [int(q.rsplit("-", 1)[1]) for q in query_ids] == list(range(11))


@ray.remote(num_cpus=0)
class _Hammer:
    """One concurrent caller in its own process. An actor, not a task: the 21 rounds below reuse
    the same 8 processes (Ray stops idle task workers beyond ``num_cpus`` after a second, so 8
    tasks a round started fresh workers, each importing torch and this module, every round)."""

    def hammer(self, handle: Any, attacker: str, batch: int, rounds: int) -> int:
        """Send `rounds` batches; return how many queries were answered."""
        oracle = Oracle(RayServiceProxy(handle), attacker)
        answered = 0
        for _ in range(rounds):
            with contextlib.suppress(BudgetExhausted):
                answered += int(oracle.query(torch.rand(batch, 1, 8, 8)).shape[0])
        return answered


def test_B1_concurrent_callers_are_charged_exactly(service: Any) -> None:
    proxy = RayServiceProxy(service)
    callers = [_Hammer.remote() for _ in range(8)]
    try:
        for i in range(8):
            proxy.open_account(f"parallel-{i}", 100)
        # 8 attackers at once, each asking for 6 x 30 = 180 against a budget of 100
        answered = ray.get(
            [c.hammer.remote(service, f"parallel-{i}", 30, 6) for i, c in enumerate(callers)]
        )
        assert answered == [90] * 8  # the 4th batch of 30 crosses 100 and is refused whole (B3)
        assert all(proxy.account_stats(f"parallel-{i}").used == 90 for i in range(8))
        # the row itself: one attacker with a budget of 1,000, 8 callers at once sending 1,500
        # queries (4 send 8 batches of 25, 4 send 7), 20 times
        for repeat in range(20):
            attacker = f"shared-{repeat}"
            proxy.open_account(attacker, 1000)
            rounds = [8, 8, 8, 8, 7, 7, 7, 7]
            answered = ray.get(
                [
                    c.hammer.remote(service, attacker, 25, r)
                    for c, r in zip(callers, rounds, strict=True)
                ]
            )
            assert sum(answered) == 1000, (repeat, answered)
            assert proxy.account_stats(attacker).used == 1000
    finally:
        for caller in callers:
            ray.kill(caller)


def test_ray_and_in_process_matches_are_identical(
    service: Any, digits: DataSplits, cache_dir: Path
) -> None:
    spec = MatchSpec(
        victim=VICTIM,
        defenses=(PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2}),),
        attack=PluginSpec(name="knockoff", params={"epochs": 3}),
        budget=128,
    )
    local = play_match(spec, digits, cache_dir)
    remote = referee_match(spec, RayServiceProxy(service), MatchData.from_splits(digits))
    for field in ("stolen_accuracy", "fidelity", "utility", "perturbation_l1", "queries_used"):
        assert getattr(local, field) == getattr(remote, field), field
    assert np.isclose(local.perturbation_kl, remote.perturbation_kl)
