"""PRADA flags a synthetic query stream, leaves natural traffic alone, keeps its state per caller,
counts queries to detection exactly, and applies each response only after detection."""

from __future__ import annotations

import pytest
import torch
from arena_testkit import ServiceFactory

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.defenses.prada import Prada, PradaState
from arena.errors import InvalidParameters, QueryRefused
from arena.oracle import Oracle
from arena.registry import build_plugin
from arena.service import VictimService
from arena.specs import PluginSpec


def synthetic_stream(data: DataSplits, n: int = 400, seeds: int = 10) -> torch.Tensor:
    """JBDA-like traffic: a few seed images, then many tiny steps around them."""
    generator = torch.Generator().manual_seed(0)
    base = data.attacker_pool.x[:seeds]
    steps = [base]
    current = base
    while sum(len(s) for s in steps) < n:
        step = 0.01 * torch.sign(torch.randn(current.shape, generator=generator))
        current = (current + step).clamp(0, 1)
        steps.append(current)
    return torch.cat(steps)[:n]


def natural_stream(data: DataSplits, seed: int) -> torch.Tensor:
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))
    return data.test.x[order]


def fixed_probs(n: int, seed: int = 1) -> torch.Tensor:
    logits = torch.randn(n, 10, generator=torch.Generator().manual_seed(seed)) * 3
    return torch.softmax(logits, dim=1)


def feed(defense: Prada, state: PradaState, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Answer ``x`` in batches of ``batch`` (the same labels whatever the batching)."""
    probs = fixed_probs(len(x))
    answers = [
        defense.respond(probs[i : i + batch], x[i : i + batch], state)
        for i in range(0, len(x), batch)
    ]
    return torch.cat(answers)


@pytest.fixture()
def service(make_service: ServiceFactory) -> VictimService:
    return make_service([PluginSpec(name="prada", params={"response": "refuse"})])


def test_synthetic_stream_is_flagged_and_natural_traffic_is_not(
    service: VictimService, digits_data: DataSplits
) -> None:
    service.open_account("thief", 1000)
    thief = Oracle(service, "thief")
    answered = thief.query_all(synthetic_stream(digits_data), 50, until_refused=True)
    flagged = service.account_stats("thief").detected_after
    assert flagged is not None and flagged <= 200
    assert len(answered) == flagged + (-flagged % 50)  # the flagging batch is still answered
    for seed in range(3):
        caller = f"benign-{seed}"
        service.open_account(caller, 1000)
        Oracle(service, caller).query_all(natural_stream(digits_data, seed)[:397], 50)
        assert service.account_stats(caller).detected_after is None


def test_state_is_per_caller(service: VictimService, digits_data: DataSplits) -> None:
    for caller in ("thief", "bystander"):
        service.open_account(caller, 1000)
    thief, bystander = Oracle(service, "thief"), Oracle(service, "bystander")
    natural = natural_stream(digits_data, 0)
    bystander.query(natural[:100])
    thief.query_all(synthetic_stream(digits_data), 50, until_refused=True)
    with pytest.raises(QueryRefused, match="PRADA"):
        thief.query(natural[:10])
    # the thief's history never entered the bystander's sets: it goes on being answered
    assert bystander.query_all(natural[100:397], 50).shape == (297, 10)
    assert service.account_stats("bystander").detected_after is None
    assert service.account_stats("bystander").refused_batches == 0


def test_detected_after_is_exact_to_the_query(digits_data: DataSplits) -> None:
    stream = synthetic_stream(digits_data)
    whole = Prada()
    one_by_one = whole.new_state()
    feed(whole, one_by_one, stream, batch=1)
    batched = whole.new_state()
    feed(whole, batched, stream, batch=64)
    assert one_by_one.flagged_after is not None
    assert batched.flagged_after == one_by_one.flagged_after
    assert whole.detected_after(batched) == one_by_one.flagged_after


def test_misinformation_lies_only_after_detection(digits_data: DataSplits) -> None:
    defense = Prada(response="misinformation")
    state = defense.new_state()
    stream = synthetic_stream(digits_data)
    probs = fixed_probs(len(stream))
    out = feed(defense, state, stream, batch=40)
    flagged = state.flagged_after
    assert flagged is not None and flagged < len(stream)
    assert torch.equal(out[:flagged], probs[:flagged])
    assert (out[flagged:].argmax(1) != probs[flagged:].argmax(1)).all()
    torch.testing.assert_close(out.sum(1), torch.ones(len(out)))


def test_flag_response_never_changes_answers(digits_data: DataSplits) -> None:
    defense = Prada(response="flag")
    state = defense.new_state()
    stream = synthetic_stream(digits_data)
    probs = torch.softmax(torch.randn(len(stream), 10), dim=1)
    assert torch.equal(defense.respond(probs, stream, state), probs)
    assert state.flagged_after is not None and defense.refusal(state) is None


@pytest.mark.parametrize(
    "params",
    [{"delta": 0}, {"delta": 1.0}, {"delta": "high"}, {"min_samples": 2}, {"response": "ban"}],
)
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters, match=next(iter(params))):
        build_plugin(DEFENSES, "prada", params)
