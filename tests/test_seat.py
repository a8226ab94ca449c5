"""SEAT flags an account that keeps sending near-duplicates of its own queries, leaves a caller
streaming distinct natural images alone, counts queries to detection exactly, applies each
response only after detection, rebuilds its per-account state after a restart, and judges every
account on its own queries (no account linking)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from arena_testkit import ServiceFactory
from test_prada import fixed_probs, natural_stream, synthetic_stream

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.defenses.preparation import PrepareContext
from arena.defenses.seat import Seat, SeatState
from arena.errors import InvalidParameters, QueryRefused
from arena.ledger import Ledger
from arena.oracle import Oracle
from arena.registry import build_plugin
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import PluginSpec, VictimSpec
from arena.victims import TrainedVictim

REFUSE = [PluginSpec(name="seat", params={"response": "refuse"})]


@pytest.fixture(scope="module")
def seat(digits_victim: TrainedVictim, digits_data: DataSplits) -> Seat:
    """SEAT prepared on the digits victim (its training split), nothing cached on disk."""
    defense = Seat()
    train = digits_data.victim_train
    context = PrepareContext("digits", "mlp", digits_data.input_shape, 10, train)
    defense.prepare(digits_victim.model, context)
    return defense


def feed(defense: Seat, state: SeatState, x: torch.Tensor, batch: int) -> torch.Tensor:
    probs = fixed_probs(len(x))
    answers = [
        defense.respond(probs[i : i + batch], x[i : i + batch], state)
        for i in range(0, len(x), batch)
    ]
    return torch.cat(answers)


def test_near_duplicate_thief_is_flagged_and_benign_callers_are_not(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service(REFUSE)
    for caller in ("thief", "benign-0", "benign-1"):
        service.open_account(caller, 1000)
    answered = Oracle(service, "thief").query_all(
        synthetic_stream(digits_data), 50, until_refused=True
    )
    flagged = service.account_stats("thief").detected_after
    assert flagged is not None and flagged <= 100
    assert len(answered) == flagged + (-flagged % 50)  # the flagging batch is still answered
    # benign callers sharing the service: the whole test set, each in its own random order
    for seed in range(2):
        caller = f"benign-{seed}"
        Oracle(service, caller).query_all(natural_stream(digits_data, seed), 50)
        stats = service.account_stats(caller)
        assert (stats.used, stats.detected_after) == (len(digits_data.test), None)


def test_detected_after_is_exact_to_the_query(seat: Seat, digits_data: DataSplits) -> None:
    stream = synthetic_stream(digits_data, n=200)
    one_by_one, batched = seat.new_state(), seat.new_state()
    feed(seat, one_by_one, stream, batch=1)
    feed(seat, batched, stream, batch=64)
    assert one_by_one.flagged_after is not None
    assert (batched.flagged_after, batched.pairs) == (one_by_one.flagged_after, one_by_one.pairs)
    assert seat.detected_after(batched) == one_by_one.flagged_after


def test_refuse_refuses_later_batches_uncharged(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service(REFUSE)
    service.open_account("thief", 1000)
    thief = Oracle(service, "thief")
    thief.query_all(synthetic_stream(digits_data), 50, until_refused=True)
    used = service.account_stats("thief").used
    with pytest.raises(QueryRefused, match="SEAT"):
        thief.query(digits_data.test.x[:10])
    stats = service.account_stats("thief")
    assert stats.used == used and stats.refused_batches >= 1


def test_misinformation_lies_only_after_detection(digits_data: DataSplits, seat: Seat) -> None:
    liar = Seat(response="misinformation")
    liar.models.update(seat.models)
    state = liar.new_state()
    stream = synthetic_stream(digits_data, n=200)
    probs = fixed_probs(len(stream))
    out = feed(liar, state, stream, batch=40)
    flagged = state.flagged_after
    assert flagged is not None and flagged < len(stream)
    assert torch.equal(out[:flagged], probs[:flagged])
    assert (out[flagged:].argmax(1) != probs[flagged:].argmax(1)).all()
    assert liar.refusal(state) is None


def _service(spec: VictimSpec, data: DataSplits, cache: Path, ledger: Path) -> VictimService:
    return build_service(spec, REFUSE, data, cache, ledger=Ledger(ledger))


def test_state_rebuilds_after_a_restart_from_the_ledger(
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim: TrainedVictim,
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = _service(digits_victim_spec, digits_data, victim_cache, path)
    for caller in ("thief", "benign"):
        first.open_account(caller, 1000)
    Oracle(first, "thief").query_all(synthetic_stream(digits_data), 50, until_refused=True)
    Oracle(first, "benign").query_all(natural_stream(digits_data, 0)[:200], 50)
    # "restart": a new service on the same file replays every answered batch
    second = _service(digits_victim_spec, digits_data, victim_cache, path)
    for caller in ("thief", "benign"):
        before, after = first.account_stats(caller), second.account_stats(caller)
        assert (after.used, after.detected_after) == (before.used, before.detected_after)
        old = first._accounts[caller].defense_states[0]
        new = second._accounts[caller].defense_states[0]
        assert (new.seen, new.pairs, new.flagged_after) == (old.seen, old.pairs, old.flagged_after)
        assert torch.equal(new.embeddings, old.embeddings)
    with pytest.raises(QueryRefused, match="SEAT"):
        Oracle(second, "thief").query(digits_data.test.x[:10])
    assert Oracle(second, "benign").query(digits_data.test.x[200:250]).shape == (50, 10)


def test_accounts_are_not_linked(make_service: ServiceFactory, digits_data: DataSplits) -> None:
    """Documents a departure from the paper: similar pairs across accounts count for neither.
    Two identities of one thief, one sending images and the other near-duplicates of them: each
    holds distinct images only and neither is flagged; one account sending both is."""
    service = make_service(REFUSE)
    images = digits_data.attacker_pool.x[:200]
    noise = 0.01 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    copies = (images + noise).clamp(0, 1)
    for caller in ("id0", "id1", "single"):
        service.open_account(caller, 400)
    Oracle(service, "id0").query_all(images, 50)
    Oracle(service, "id1").query_all(copies, 50)
    assert [service.account_stats(i).detected_after for i in ("id0", "id1")] == [None, None]
    Oracle(service, "single").query_all(torch.cat([images, copies]), 50, until_refused=True)
    assert service.account_stats("single").detected_after is not None


@pytest.mark.parametrize(
    "params",
    [
        {"quantile": 0},
        {"quantile": 1.0},
        {"quantile": "low"},
        {"max_pairs": -1},
        {"max_pairs": 2.5},
        {"response": "ban"},
        {"epsilon": 0},
        {"epochs": 0},
        {"embedding_dim": 0},
    ],
)
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters, match=next(iter(params))):
        build_plugin(DEFENSES, "seat", params)
