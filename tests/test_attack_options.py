"""Defense-aware attacker options, multi-account thieves, pools, baselines and adaptive Knockoff."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from arena_testkit import ServiceFactory, match_spec, open_oracle
from test_prada import synthetic_stream

from agents.knockoff import GradientBandit, RunningRewards, batch_rewards
from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.errors import BudgetExhausted, InvalidParameters, QueryRefused
from arena.identities import identity_budgets
from arena.oracle import Oracle
from arena.oracle_adapters import ArgmaxOracle, MultiAccountOracle, SmoothingOracle
from arena.pools import attacker_pool
from arena.referee import play_match
from arena.registry import build_plugin, canonical_params
from arena.service import VictimService
from arena.specs import MatchSpec, PluginSpec, VictimSpec

# ---- countermeasure options on every attack ---------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize(
    "params",
    [
        {"identities": 0},
        {"identities": 1.5},
        {"smoothing_copies": 0},
        {"smoothing_noise": -0.1},
        {"argmax_labels": "yes"},
    ],
    ids=["identities0", "identities-float", "copies0", "noise-neg", "argmax-str"],
)
def test_every_attack_checks_the_shared_options(name: str, params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(ATTACKS, name, params)


def test_options_at_their_defaults_leave_match_keys_alone() -> None:
    plain = canonical_params(ATTACKS, "knockoff", {})
    assert not {"argmax_labels", "smoothing_copies", "smoothing_noise", "identities"} & set(plain)
    assert canonical_params(ATTACKS, "knockoff", {"identities": 1}) == plain
    assert canonical_params(ATTACKS, "knockoff", {"identities": 3})["identities"] == 3


def test_argmax_view_answers_one_hot_at_the_victims_label(make_service: ServiceFactory) -> None:
    service = make_service(["reverse_sigmoid"])
    raw, view = open_oracle(service, "raw", 100), ArgmaxOracle(open_oracle(service, "top1", 100))
    x = torch.rand(40, 1, 8, 8)
    soft, hard = raw.query(x), view.query(x)
    assert torch.equal(hard.argmax(dim=1), soft.argmax(dim=1))
    assert torch.equal(hard.sum(dim=1), torch.ones(40)) and set(hard.unique().tolist()) == {0, 1}
    assert view.used == service.account_stats("top1").used == 40


def test_smoothing_charges_every_copy_and_averages(make_service: ServiceFactory) -> None:
    service = make_service()
    view = SmoothingOracle(open_oracle(service, "smooth", 100), copies=4, noise=0.1, seed=0)
    assert (view.budget, view.remaining) == (25, 25)
    answers = view.query(torch.rand(10, 1, 8, 8))
    assert answers.shape == (10, 10)
    assert torch.allclose(answers.sum(dim=1), torch.ones(10), atol=1e-5)
    assert service.account_stats("smooth").used == 40 and view.remaining == 15
    with pytest.raises(BudgetExhausted):
        view.query(torch.rand(16, 1, 8, 8))
    assert service.account_stats("smooth").used == 40  # refused whole, nothing charged


# ---- multi-account thieves ----------------------------------------------------------------------


def test_multi_account_thief_gets_each_identitys_budget_and_no_more(
    make_service: ServiceFactory,
) -> None:
    service = make_service()
    oracles = [open_oracle(service, f"sybil-{i}", 30) for i in range(3)]
    thief = MultiAccountOracle(oracles)
    assert (thief.budget, thief.remaining) == (90, 90)
    assert thief.query(torch.rand(50, 1, 8, 8)).shape == (50, 10)
    with pytest.raises(BudgetExhausted):
        thief.query(torch.rand(41, 1, 8, 8))
    assert thief.query(torch.rand(40, 1, 8, 8)).shape == (40, 10)
    used = [service.account_stats(f"sybil-{i}").used for i in range(3)]
    assert used == [30, 30, 30]
    with pytest.raises(BudgetExhausted):
        thief.query(torch.rand(1, 1, 8, 8))


def burned_identity(service: VictimService, data: DataSplits, name: str) -> Oracle:
    """An account PRADA has flagged: every further query of it is refused."""
    burned = open_oracle(service, name, 1000)
    burned.query_all(synthetic_stream(data), 50, until_refused=True)
    assert service.account_stats(name).detected_after is not None
    return burned


def test_a_refused_identity_is_dropped_and_the_others_answer(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service([PluginSpec(name="prada", params={"response": "refuse"})])
    burned = burned_identity(service, digits_data, "burned")
    fresh = open_oracle(service, "fresh", 1000)
    thief = MultiAccountOracle([burned, fresh])
    answers = thief.query(digits_data.attacker_pool.x[:60])
    assert answers.shape == (60, 10) and thief.refused_identities == 1
    assert service.account_stats("fresh").used == 60


def test_every_identity_refused_raises_query_refused(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service([PluginSpec(name="prada", params={"response": "refuse"})])
    burned = burned_identity(service, digits_data, "only")
    with pytest.raises(QueryRefused):
        MultiAccountOracle([burned]).query(digits_data.attacker_pool.x[:5])


def test_a_batch_only_refused_identities_could_answer_is_refused_not_over_budget(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service([PluginSpec(name="prada", params={"response": "refuse"})])
    burned = burned_identity(service, digits_data, "burned-2")
    thief = MultiAccountOracle([burned, open_oracle(service, "small", 30)])
    pool = digits_data.attacker_pool.x
    answers = thief.query_all(pool[:200], 40, until_refused=True)  # stops, never raises
    assert answers.shape[0] < 200 and thief.refused_identities == 1
    with pytest.raises(QueryRefused):
        thief.query(pool[:40])
    assert service.account_stats("small").used <= 30  # rows answered before a refusal are paid


def test_match_with_identities_splits_the_budget(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, [], "knockoff", {"epochs": 2, "identities": 3}, 200)
    assert sorted(identity_budgets(spec, 3).values()) == [66, 67, 67]
    result = play_match(spec, digits_data, victim_cache)
    assert result.identities == 3 and result.queries_used == 200
    assert result.attack == "knockoff(identities=3,epochs=2)"


# ---- pools and baselines -----------------------------------------------------------------------


def test_pools(digits_data: DataSplits) -> None:
    inside = attacker_pool(digits_data, "in_distribution")
    assert inside.images is digits_data.attacker_pool.x
    outside = attacker_pool(digits_data, "out_of_distribution")
    assert outside.images is not None and outside.labels is None
    assert outside.images.shape == (5000, *digits_data.input_shape)
    assert float(outside.images.min()) >= 0.0 and float(outside.images.max()) <= 1.0
    assert attacker_pool(digits_data, "none").images is None
    with pytest.raises(ValueError, match="unknown pool"):
        attacker_pool(digits_data, "imagenet")


def test_out_of_distribution_pool_match(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = MatchSpec(
        victim=digits_victim_spec,
        defenses=(PluginSpec(name="none"),),
        attack=PluginSpec(name="copycat", params={"epochs": 5}),
        budget=300,
        pool="out_of_distribution",
    )
    result = play_match(spec, digits_data, victim_cache)
    assert result.pool == "out_of_distribution" and result.queries_used == 300
    in_pool = play_match(
        spec.model_copy(update={"pool": "in_distribution"}), digits_data, victim_cache
    )
    assert in_pool.stolen_accuracy != result.stolen_accuracy  # other queries, another thief


def test_true_label_bound_never_queries_and_is_marked(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, ["label_only"], "true_labels", {"epochs": 10}, 300)
    result = play_match(spec, digits_data, victim_cache)
    assert result.upper_bound and result.queries_used == 0
    assert result.stolen_accuracy > 0.6


def test_random_queries_baseline_spends_its_budget_on_noise(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    from arena.knowledge import Knowledge

    service = make_service()
    oracle = open_oracle(service, "noise", 150)
    knowledge = Knowledge(None, "none", digits_data.input_shape, 10, "mlp")
    attacker = build_plugin(ATTACKS, "random_queries", {"epochs": 2})
    attacker.steal(oracle, knowledge, np.random.default_rng(0))
    assert service.account_stats("noise").used == 150


# ---- adaptive Knockoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answers",
    [
        torch.nn.functional.one_hot(torch.arange(8) % 3, 10).float(),  # saturated (label-only)
        torch.full((8, 10), 0.1),  # flat
        torch.cat([torch.ones(8, 1), torch.zeros(8, 9)], dim=1),  # one class, always
    ],
    ids=["one-hot", "uniform", "constant"],
)
def test_adaptive_rewards_stay_finite_on_degenerate_answers(answers: torch.Tensor) -> None:
    logits = torch.tensor([[1e30, -1e30] + [0.0] * 8] * 8)  # a saturated substitute too
    stats = RunningRewards()
    bandit = GradientBandit(3, 0.5)
    recent: list[torch.Tensor] = []
    for step in range(20):
        raw = batch_rewards(answers, logits, recent)
        assert all(np.isfinite(v) for v in raw.values())
        reward = stats.score(raw, "all")
        assert np.isfinite(reward)
        action = bandit.draw(np.random.default_rng(step), np.ones(3, dtype=bool))
        bandit.update(action, reward)
        recent.append(answers.mean(dim=0))
    assert np.isfinite(bandit.preferences).all()
    assert np.isclose(bandit.policy(np.ones(3, dtype=bool)).sum(), 1.0)


def test_bandit_learns_to_prefer_the_rewarding_action() -> None:
    bandit = GradientBandit(4, 0.2)
    rng = np.random.default_rng(0)
    available = np.ones(4, dtype=bool)
    for _ in range(300):
        action = bandit.draw(rng, available)
        bandit.update(action, 1.0 if action == 2 else 0.0)
    policy = bandit.policy(available)
    assert policy.argmax() == 2 and policy[2] > 0.7


def test_bandit_never_draws_an_exhausted_action() -> None:
    bandit = GradientBandit(3, 0.2)
    available = np.array([False, True, False])
    draws = {bandit.draw(np.random.default_rng(s), available) for s in range(20)}
    assert draws == {1}


@pytest.mark.parametrize("defense", ["none", "label_only"])
def test_adaptive_knockoff_spends_its_budget_and_learns(
    make_service: ServiceFactory, digits_data: DataSplits, defense: str
) -> None:
    from arena.knowledge import Knowledge

    service = make_service([defense])
    oracle = open_oracle(service, "adaptive", 250)
    knowledge = Knowledge(digits_data.attacker_pool.x, "in_distribution", (1, 8, 8), 10, "mlp")
    params = {"policy": "adaptive", "epochs": 10, "step_batch": 16, "actions": 5}
    model = build_plugin(ATTACKS, "knockoff", params).steal(
        oracle, knowledge, np.random.default_rng(0)
    )
    assert service.account_stats("adaptive").used == 250
    with torch.no_grad():
        accuracy = (model(digits_data.test.x).argmax(1) == digits_data.test.y).float().mean()
    assert float(accuracy) > 0.25  # chance is 0.1; measured 0.40 (soft), random policy ~0.44


def test_adaptive_knockoff_bad_parameters() -> None:
    for params in ({"policy": "greedy"}, {"reward": "fun"}, {"actions": 0}, {"bandit_lr": 0}):
        with pytest.raises(InvalidParameters):
            build_plugin(ATTACKS, "knockoff", params)


def test_oracle_views_are_oracles(make_service: ServiceFactory) -> None:
    service = make_service()
    inner = open_oracle(service, "views", 10)
    for view in (ArgmaxOracle(inner), SmoothingOracle(inner, 2, 0.0, 0)):
        assert isinstance(view, Oracle)
        assert view.input_spec == inner.input_spec and view.output_spec == inner.output_spec
