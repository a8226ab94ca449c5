"""The query-distribution detector (D-ADD style) flags synthetic, noise and out-of-distribution
query streams, leaves natural traffic alone (a benign caller sharing the service, an
in-distribution thief), flags exactly at a window's end whatever the batching, applies each
response only after the flag, and rebuilds its per-caller state from the ledger after a
restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from arena_testkit import ServiceFactory, match_spec

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.defenses.preparation import PrepareContext
from arena.defenses.query_distribution import (
    QueryDistribution,
    QueryDistributionState,
    Reference,
)
from arena.errors import InvalidParameters, QueryRefused
from arena.ledger import Ledger
from arena.oracle import Answer, Oracle
from arena.registry import build_plugin
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import PluginSpec, VictimSpec
from arena.victims import TrainedVictim, prepare_context

WINDOW = 64


def synthetic_stream(data: DataSplits, n: int = 512, seeds: int = 10) -> torch.Tensor:
    """JBDA-like traffic: a few seed images, then signed steps of 0.05 around them."""
    generator = torch.Generator().manual_seed(0)
    current = data.attacker_pool.x[:seeds]
    steps = [current]
    while sum(len(s) for s in steps) < n:
        current = (current + 0.05 * torch.randn(current.shape, generator=generator).sign()).clamp(
            0, 1
        )
        steps.append(current)
    return torch.cat(steps)[:n]


def noise_stream(data: DataSplits, n: int = 512) -> torch.Tensor:
    return torch.rand(n, *data.input_shape, generator=torch.Generator().manual_seed(1))


def ood_stream(data: DataSplits) -> torch.Tensor:
    """Out of distribution: the pool's digits with ink and paper swapped."""
    return 1 - data.attacker_pool.x[:512]


def shuffled(x: torch.Tensor, seed: int) -> torch.Tensor:
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]


@pytest.fixture(scope="module")
def service(make_service: ServiceFactory) -> VictimService:
    return make_service([PluginSpec(name="query_distribution", params={"response": "refuse"})])


@pytest.fixture(scope="module")
def context(
    digits_victim: TrainedVictim, digits_data: DataSplits, tmp_path_factory: pytest.TempPathFactory
) -> PrepareContext:
    return prepare_context(digits_victim.spec, digits_data, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def detector(digits_victim: TrainedVictim, context: PrepareContext) -> QueryDistribution:
    defense = QueryDistribution()
    defense.prepare(digits_victim.model, context)
    return defense


def feed(
    defense: QueryDistribution, model: torch.nn.Module, x: torch.Tensor, batch: int
) -> tuple[QueryDistributionState, torch.Tensor, torch.Tensor]:
    """The state, the model's probabilities and the answers after ``x`` in batches of
    ``batch``."""
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    state = defense.new_state()
    answers = [
        defense.respond(probs[i : i + batch], x[i : i + batch], state)
        for i in range(0, len(x), batch)
    ]
    return state, probs, torch.cat(answers)


@pytest.mark.parametrize("stream", [synthetic_stream, noise_stream, ood_stream])
def test_unnatural_streams_are_flagged_and_refused(
    service: VictimService, digits_data: DataSplits, stream: object
) -> None:
    assert callable(stream)
    caller = f"thief-{stream.__name__}"
    service.open_account(caller, 1000)
    thief = Oracle(service, caller)
    answered = thief.query_all(stream(digits_data), 50, until_refused=True)
    flagged = service.account_stats(caller).detected_after
    assert flagged is not None and flagged <= 4 * WINDOW and flagged % WINDOW == 0
    assert len(answered) == flagged + (-flagged % 50)  # the flagging batch is still answered
    used = service.account_stats(caller).used
    with pytest.raises(QueryRefused, match="query_distribution"):
        thief.query(digits_data.test.x[:10])
    stats = service.account_stats(caller)
    assert stats.used == used and stats.refused_batches >= 1  # refused batches are not charged


def test_benign_caller_and_in_distribution_thief_share_the_service_unflagged(
    service: VictimService, digits_data: DataSplits
) -> None:
    for caller in ("noisy", "benign", "knockoff"):
        service.open_account(caller, 1000)
    noisy, benign = Oracle(service, "noisy"), Oracle(service, "benign")
    test = shuffled(digits_data.test.x, 0)
    benign.query_all(test[:200], 50)
    noisy.query_all(noise_stream(digits_data), 50, until_refused=True)
    benign.query_all(test[200:], 50)
    assert service.account_stats("noisy").detected_after is not None
    assert service.account_stats("benign").detected_after is None
    assert service.account_stats("benign").refused_batches == 0
    # a thief whose pool is the task's own distribution looks benign (by design)
    pool = shuffled(digits_data.attacker_pool.x, 1)[:640]
    Oracle(service, "knockoff").query_all(pool, 100)
    assert service.account_stats("knockoff").detected_after is None


def test_detected_after_is_exact_whatever_the_batching(
    detector: QueryDistribution, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    x = torch.cat([shuffled(digits_data.test.x, 2)[: 3 * WINDOW], noise_stream(digits_data)])
    flags = {
        batch: feed(detector, digits_victim.model, x, batch)[0].flagged_after
        for batch in (1, 50, WINDOW, 500)
    }
    assert flags[1] is not None and flags[1] % WINDOW == 0 and flags[1] > 3 * WINDOW
    assert set(flags.values()) == {flags[1]}


def test_misinformation_lies_only_after_detection(
    detector: QueryDistribution, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    lying = QueryDistribution(response="misinformation")
    lying.models.update(detector.models)
    state, probs, out = feed(lying, digits_victim.model, noise_stream(digits_data), 40)
    flagged = state.flagged_after
    assert flagged is not None and flagged < len(out)
    assert torch.equal(out[:flagged], probs[:flagged])
    assert (out[flagged:].argmax(1) != probs[flagged:].argmax(1)).all()
    torch.testing.assert_close(out.sum(1), torch.ones(len(out)))


def test_flag_response_never_changes_answers(
    detector: QueryDistribution, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    state, probs, out = feed(detector, digits_victim.model, noise_stream(digits_data), 50)
    assert torch.equal(out, probs)
    assert state.flagged_after is not None and detector.refusal(state) is None


def test_a_stricter_fpr_raises_the_threshold(
    detector: QueryDistribution, digits_victim: TrainedVictim, context: PrepareContext
) -> None:
    strict = QueryDistribution(fpr=0.001)
    strict.prepare(digits_victim.model, context)
    assert np.isfinite(detector.threshold) and strict.threshold > detector.threshold


def test_state_rebuilds_from_the_ledger_after_a_restart(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path, tmp_path: Path
) -> None:
    spec = match_spec(
        digits_victim_spec, [PluginSpec(name="query_distribution", params={"response": "refuse"})]
    )
    path = tmp_path / "ledger.sqlite3"
    x = torch.cat([shuffled(digits_data.test.x, 3)[:100], noise_stream(digits_data)]).numpy()
    batches = [x[i : i + 30] for i in range(0, 150, 30)]  # 150 queries: flagged at 128

    def restarted() -> VictimService:
        return build_service(
            spec.victim, spec.defenses, digits_data, victim_cache, ledger=Ledger(path)
        )

    first = restarted()
    first.open_account("thief", 1000)
    for i, batch in enumerate(batches[:3]):  # 90 queries: one window, not flagged
        assert isinstance(first.answer("thief", f"q{i}", batch), Answer)
    assert first.account_stats("thief").detected_after is None
    second = restarted()  # the pending 26 queries of the second window come back from the ledger
    second.open_account("thief", 1000)
    for i, batch in enumerate(batches[3:], start=3):
        assert isinstance(second.answer("thief", f"q{i}", batch), Answer)
    assert second.account_stats("thief").detected_after == 2 * WINDOW
    third = restarted()
    assert third.account_stats("thief").detected_after == 2 * WINDOW
    refused = third.answer("thief", "q9", x[150:160])
    assert not isinstance(refused, Answer) and "query_distribution" in refused.message


@pytest.mark.parametrize(
    "params",
    [
        {"fpr": 0},
        {"fpr": 1.0},
        {"fpr": "low"},
        {"window": 1},
        {"window": 64.0},
        {"horizon": 0},
        {"response": "ban"},
    ],
)
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters, match=next(iter(params))):
        build_plugin(DEFENSES, "query_distribution", params)


def test_window_score_is_the_count_weighted_frechet_distance() -> None:
    """One window scored against the formula with scipy's matrix square root."""
    generator = torch.Generator().manual_seed(4)
    reference = Reference(3)
    train = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    train_labels = torch.randint(0, 3, (300,), generator=generator)
    reference.fit(train, train_labels)
    window = torch.randn(1, 20, 3, generator=generator, dtype=torch.float64) * 2 + 0.5
    labels = torch.randint(0, 2, (1, 20), generator=generator)  # class 2 absent
    expected = 0.0
    for c in (0, 1):
        rows, ref = window[0][labels[0] == c].numpy(), train[train_labels == c].numpy()
        m, b = rows.mean(0), np.cov(rows.T, bias=True)
        mu, s = ref.mean(0), np.cov(ref.T, bias=True)
        cross = np.trace(scipy.linalg.sqrtm(s @ b)).real
        distance = ((m - mu) ** 2).sum() + np.trace(b) + np.trace(s) - 2 * cross
        expected += len(rows) * distance / 20
    assert float(reference.scores(window, labels)[0]) == pytest.approx(expected, rel=1e-6)
