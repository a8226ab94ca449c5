"""The victim actor under faults (RELIABILITY F1, F2, B2, Q4): SIGKILLed mid-match it restarts
from its ledger file and the match ends exactly as without the fault; killed more often than it
may restart, the match fails with the reason; a full queue and a hung victim give typed errors
and charge nothing.

Faults are injected from inside a real actor process: :class:`FaultyVictimService` is the hosted
service with a fault plan (a JSON file named by an environment variable) that kills or hangs the
process at a chosen point of ``answer`` — before the charge, between the charge and the answer,
or after the answer was recorded — once per plan entry (marker files survive the restarts).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle
import torch

import agents  # noqa: F401
from arena.data import DataSplits
from arena.errors import Overloaded, VictimUnavailable
from arena.match_data import MatchData
from arena.oracle import Answer, InputSpec, Oracle, Rejection
from arena.record import MatchResult
from arena.referee import play_match, referee_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train
from orchestration.ray_service import HostedVictimService, RayServiceProxy, start_victim_service
from orchestration.runtime import MatchFailure, play_match_task

pytestmark = pytest.mark.ray

# the actor processes need this module's fault-injecting service class; it is not importable
# there, so Ray pickles it by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)
DEFENSES = (PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2}),)
PLAN_VARIABLE = "ARENA_TEST_FAULT_PLAN"


class FaultyVictimService(HostedVictimService):
    """The hosted victim service, with faults injected where its plan says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plan_path = Path(os.environ[PLAN_VARIABLE])
        self._plan = json.loads(self._plan_path.read_text())
        (self._plan_path.parent / f"started-{os.getpid()}").write_text(repr(time.time()))
        charge = self._ledger.charge

        def charge_then_fault(attacker: str, *args: Any) -> int:
            used = charge(attacker, *args)
            self._fault("charged", attacker)
            return used

        self._ledger.charge = charge_then_fault  # type: ignore[method-assign]

    def answer(
        self, attacker_id: str, query_id: str, x: Any, targets: Any = None, work: Any = None
    ) -> Any:
        self._fault("before", attacker_id)
        result = super().answer(attacker_id, query_id, x, targets, work)
        self._fault("answered", attacker_id)
        return result

    def _fault(self, phase: str, attacker_id: str) -> None:
        account = self._accounts.get(attacker_id)
        answered = 0 if account is None else account.stats.batches
        for index, step in enumerate(self._plan):
            marker = self._plan_path.parent / f"fault-{index}"
            if step["phase"] != phase or step["at"] != answered or marker.exists():
                continue
            marker.write_text(repr(time.time()))
            if step["action"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(step["seconds"])


@pytest.fixture(scope="module")
def weights(ray_session: None, digits: DataSplits, cache_dir: Path) -> Any:
    return ray.put(load_or_train(VICTIM, digits, cache_dir).model.state_dict())


def _faulty_service(
    weights: Any,
    digits: DataSplits,
    work: Path,
    plan: list[dict[str, Any]],
    max_restarts: int,
    **options: Any,
) -> Any:
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps(plan))
    return start_victim_service(
        VICTIM,
        DEFENSES,
        weights,
        InputSpec(shape=digits.input_shape, max_batch=64),
        digits.num_classes,
        ledger_path=work / "ledger.sqlite3",
        max_restarts=max_restarts,
        service_cls=FaultyVictimService,
        runtime_env={"env_vars": {PLAN_VARIABLE: str(work / "plan.json")}},
        **options,
    )


def _spec(budget: int = 640) -> MatchSpec:
    return MatchSpec(
        victim=VICTIM,
        defenses=DEFENSES,
        attack=PluginSpec(name="knockoff", params={"epochs": 3}),
        budget=budget,
    )


DETERMINISTIC = ("stolen_accuracy", "fidelity", "utility", "perturbation_l1", "queries_used")


def test_F1_B2_victim_killed_three_times_mid_match_ends_as_without_faults(
    weights: Any, digits: DataSplits, cache_dir: Path, tmp_path: Path
) -> None:
    spec = _spec()
    steady = play_match(spec, digits, cache_dir)
    # one kill in each window: before the charge, between charge and answer, after the answer
    plan = [
        {"at": 2, "phase": "before", "action": "kill"},
        {"at": 4, "phase": "charged", "action": "kill"},
        {"at": 6, "phase": "answered", "action": "kill"},
    ]
    handle = _faulty_service(weights, digits, tmp_path, plan, max_restarts=5)
    try:
        proxy = RayServiceProxy(handle)
        faulted = referee_match(spec, proxy, MatchData.from_splits(digits))
    finally:
        ray.kill(handle)
    for field in DETERMINISTIC:
        assert getattr(faulted, field) == getattr(steady, field), field
    kills = sorted(float((tmp_path / f"fault-{i}").read_text()) for i in range(3))
    assert len(list(tmp_path.glob("started-*"))) == 4  # the first process and three restarts
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    charged_ids, charged = db.execute("SELECT COUNT(*), SUM(size) FROM charges").fetchone()
    audited = db.execute("SELECT COUNT(*), SUM(size) FROM audit").fetchone()
    (used,) = db.execute("SELECT SUM(used) FROM accounts").fetchone()
    # charged == distinct queries, exactly: no overcharge from Ray's retries (B2)
    assert charged == used == spec.budget == faulted.queries_used
    assert audited == (charged_ids, charged) and faulted.audit_queries == spec.budget
    answered_at = [t for (t,) in db.execute("SELECT answered_at FROM audit ORDER BY seq")]
    recovery = [min(t for t in answered_at if t > kill) - kill for kill in kills]
    print(f"F1 seconds from each kill to the next answer: {[round(r, 2) for r in recovery]}")
    assert max(recovery) <= 10.0


def test_F2_victim_killed_beyond_its_restarts_fails_the_match_with_the_reason(
    weights: Any, digits: DataSplits, cache_dir: Path, tmp_path: Path
) -> None:
    plan = [
        {"at": 1, "phase": "before", "action": "kill"},
        {"at": 1, "phase": "charged", "action": "kill"},
    ]
    doomed = _faulty_service(weights, digits, tmp_path / "doomed", plan, max_restarts=1)
    healthy = _faulty_service(weights, digits, tmp_path / "healthy", [], max_restarts=1)
    data = ray.put(MatchData.from_splits(digits))
    try:
        outcomes = ray.get(
            [
                play_match_task.remote(_spec(256), doomed, data, 1),
                play_match_task.remote(_spec(256), healthy, data, 1),
            ],
            timeout=240,
        )
    finally:
        ray.kill(doomed)
        ray.kill(healthy)
    failure, other = outcomes
    assert isinstance(failure, MatchFailure), failure
    assert "VictimUnavailable" in failure.reason and "down" in failure.reason
    assert isinstance(other, MatchResult) and other.queries_used == 256


def test_Q4_full_queue_is_overloaded_and_uncharged(
    weights: Any, digits: DataSplits, tmp_path: Path
) -> None:
    plan = [{"at": i, "phase": "before", "action": "sleep", "seconds": 0.3} for i in range(8)]
    handle = _faulty_service(weights, digits, tmp_path, plan, max_restarts=0, max_pending_calls=2)
    proxy = RayServiceProxy(handle)
    proxy.open_account("crowd", 10_000)
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        try:
            Oracle(proxy, "crowd").query(torch.rand(4, 1, 8, 8))
            outcome = "answered"
        except Overloaded:
            outcome = "overloaded"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        answered = outcomes.count("answered")
        assert outcomes.count("overloaded") >= 1 and answered >= 1
        assert len(outcomes) == 12
        assert proxy.account_status("crowd").used == 4 * answered  # the overloaded paid nothing
    finally:
        ray.kill(handle)


def test_Q4_hung_victim_times_out_typed_then_restarts_and_charges_once(
    weights: Any, digits: DataSplits, tmp_path: Path
) -> None:
    plan = [{"at": 1, "phase": "charged", "action": "sleep", "seconds": 120}]
    handle = _faulty_service(weights, digits, tmp_path, plan, max_restarts=2)
    RayServiceProxy(handle).open_account("thief", 100)  # waits for the actor to start
    proxy = RayServiceProxy(handle, timeout_s=3.0)
    try:
        x = torch.rand(5, 1, 8, 8).numpy()
        assert isinstance(proxy.answer("thief", "q0", x), Answer)
        started = time.perf_counter()
        hung = proxy.answer("thief", "q1", x)
        assert isinstance(hung, Rejection) and hung.code == "unavailable"
        assert isinstance(hung.to_error(), VictimUnavailable)
        assert time.perf_counter() - started < 10
        # the restarted victim answers the same query id: the hung call's charge, not a new one
        deadline = time.monotonic() + 30
        retried = proxy.answer("thief", "q1", x)
        while not isinstance(retried, Answer) and time.monotonic() < deadline:
            time.sleep(0.5)
            retried = proxy.answer("thief", "q1", x)
        assert isinstance(retried, Answer), retried
        assert proxy.account_status("thief").used == 10
        assert len(list(tmp_path.glob("started-*"))) == 2
    finally:
        ray.kill(handle)
