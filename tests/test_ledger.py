"""The persistent ledger and audit log (RELIABILITY B2, B5): a service reopened on its ledger
file after a crash charges nothing twice, refunds nothing and answers exactly as if it had never
stopped; the audit log has one append-only record per answered batch and survives SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from arena_testkit import DefenseArg, as_plugin_specs

from arena.data import DataSplits
from arena.defenses.chain import build_chain
from arena.ledger import Ledger, array_hash
from arena.oracle import Answer, InputSpec, Rejection
from arena.service import VictimService
from arena.specs import PluginSpec
from arena.victims import TrainedVictim

STATEFUL_CHAIN: tuple[DefenseArg, ...] = (
    PluginSpec(
        name="prada", params={"delta": 0.95, "min_samples": 10, "response": "misinformation"}
    ),
    PluginSpec(name="dawn", params={"fraction": 0.2}),
)


def _service(
    victim: TrainedVictim, data: DataSplits, ledger: Ledger, defenses: tuple[DefenseArg, ...]
) -> VictimService:
    chain = build_chain(as_plugin_specs(defenses))
    spec = InputSpec(shape=data.input_shape)
    return VictimService(victim.model, chain, spec, data.num_classes, ledger=ledger)


def _batches(data: DataSplits, count: int, size: int) -> list[np.ndarray]:
    x = data.attacker_pool.x.numpy()
    return [x[i * size : (i + 1) * size].copy() for i in range(count)]


def _answer(service: VictimService, qid: str, x: np.ndarray) -> np.ndarray:
    result = service.answer("thief", qid, x)
    assert isinstance(result, Answer), result
    return result.outputs


def test_B2_reopened_service_answers_as_if_it_never_stopped(
    digits_victim: TrainedVictim, digits_data: DataSplits, tmp_path: Path
) -> None:
    batches = _batches(digits_data, 12, 16)
    # the run without a fault
    steady = _service(digits_victim, digits_data, Ledger(), STATEFUL_CHAIN)
    steady.open_account("thief", 1000)
    expected = [_answer(steady, f"q{i}", x) for i, x in enumerate(batches)]

    path = tmp_path / "ledger.sqlite3"
    first = _service(digits_victim, digits_data, Ledger(path), STATEFUL_CHAIN)
    first.open_account("thief", 1000)
    for i, x in enumerate(batches[:6]):
        np.testing.assert_array_equal(_answer(first, f"q{i}", x), expected[i])
    # "restart": a new service on the same file, the way a Ray actor re-runs __init__
    second = _service(digits_victim, digits_data, Ledger(path), STATEFUL_CHAIN)
    second.open_account("thief", 1000)  # the referee reopening is a no-op, not a refund
    assert second.account_status("thief").used == 6 * 16
    # a retried call from before the restart: the recorded answer, charged once
    np.testing.assert_array_equal(_answer(second, "q5", batches[5]), expected[5])
    assert second.account_status("thief").used == 6 * 16
    for i, x in enumerate(batches[6:], start=6):
        np.testing.assert_array_equal(_answer(second, f"q{i}", x), expected[i])
    restored, reference = second.account_stats("thief"), steady.account_stats("thief")
    assert (restored.used, restored.batches) == (reference.used, reference.batches)
    assert restored.detected_after == reference.detected_after
    assert restored.l1_sum == pytest.approx(reference.l1_sum)
    # the detector's and the watermark's per-caller states were replayed, not reset
    assert [k.y.tolist() for _, k in second.ownership_keys("thief")] == [
        k.y.tolist() for _, k in steady.ownership_keys("thief")
    ]


def test_B2_a_charge_whose_answer_was_lost_is_answered_without_a_second_charge(
    digits_victim: TrainedVictim, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    x = _batches(digits_data, 1, 8)[0]
    service = _service(digits_victim, digits_data, Ledger(path), ())
    service.open_account("thief", 20)
    # the service died between charging and answering: only the charge reached the file
    Ledger(path).charge("thief", "q0", 8, array_hash(x))
    reopened = _service(digits_victim, digits_data, Ledger(path), ())
    assert reopened.account_status("thief").used == 8
    outputs = _answer(reopened, "q0", x)
    assert outputs.shape == (8, digits_data.num_classes)
    assert reopened.account_status("thief").used == 8
    assert reopened.audit("thief").queries == 8


def test_B5_audit_log_counts_match_the_ledger_and_are_append_only(
    digits_victim: TrainedVictim, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    service = _service(digits_victim, digits_data, Ledger(path), ("rounding",))
    service.open_account("thief", 100)
    batches = _batches(digits_data, 7, 15)
    answered = 0
    for i, x in enumerate(batches):
        result = service.answer("thief", f"q{i}", x)
        if isinstance(result, Answer):
            answered += len(x)
        else:
            assert isinstance(result, Rejection) and result.code == "budget_exhausted"
    service.answer("thief", "q0", batches[0])  # a replay adds no record
    audit = service.audit("thief")
    assert audit.queries == answered == service.account_status("thief").used == 90
    assert audit.batches == 6
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(audit)")]
    for field in ("attacker", "query_id", "input_hash", "output_hash", "defense", "answered_at"):
        assert field in columns
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET output_hash = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")
    # the digest covers the records: the same log gives the same hash, another log another
    assert Ledger(path).audit("thief") == audit
    assert Ledger(path).audit("nobody").sha256 != audit.sha256


def _serve_then_die(path: str, victim: TrainedVictim, data: DataSplits, batches: int) -> None:
    torch.set_num_threads(1)
    service = _service(victim, data, Ledger(path), ())
    service.open_account("thief", 1000)
    for i, x in enumerate(_batches(data, batches, 10)):
        _answer(service, f"q{i}", x)
    os.kill(os.getpid(), signal.SIGKILL)


def test_B5_audit_log_survives_sigkill(
    digits_victim: TrainedVictim, digits_data: DataSplits, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    context = multiprocessing.get_context("fork")
    process = context.Process(
        target=_serve_then_die, args=(str(path), digits_victim, digits_data, 9)
    )
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    ledger = Ledger(path)
    assert ledger.accounts()["thief"].used == 90
    assert (ledger.audit("thief").batches, ledger.audit("thief").queries) == (9, 90)


def test_ledger_never_overspends_even_when_asked_directly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    ledger.open_account("a", 10, {})
    assert ledger.charge("a", "q0", 6, "h0") == 6
    with pytest.raises(ValueError, match="overspend"):
        ledger.charge("a", "q1", 5, "h1")
    with pytest.raises(sqlite3.IntegrityError):
        ledger.charge("a", "q0", 1, "h0")  # one charge per query id
    assert ledger.accounts()["a"].used == 6
