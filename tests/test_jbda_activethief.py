"""JBDA, JBDA-TR and ActiveThief on the digits victim: budgets, what the queries look like, what the
selection strategies pick, learning, determinism, parameter checks and detector refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from arena_testkit import ServiceFactory, open_oracle, pool_knowledge
from torch import nn

from agents.activethief import ActiveThief, entropy, k_center_greedy, round_sizes
from agents.jbda import Jbda, JbdaTR, class_logit, input_gradients, target_loss
from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.oracle import AccountStatus, Answer, InputSpec, Oracle, OutputSpec, Rejection
from arena.registry import build_plugin
from arena.service import VictimService
from arena.specs import PluginSpec
from arena.training import TrainRecipe, predict_probs, train_classifier

ATTACK_CASES = [
    ("jbda", {}),
    ("jbda_tr", {}),
    ("activethief", {"strategy": "entropy"}),
    ("activethief", {"strategy": "kcenter"}),
    ("activethief", {"strategy": "random"}),
]
CASE_IDS = ["jbda", "jbda_tr", "entropy", "kcenter", "random"]
FAST = {"epochs": 2}
"""cheap training where a test is about the queries, not about learning"""


def fast(name: str, params: dict[str, Any]) -> dict[str, Any]:
    extra = {"round_epochs": 2} if name in ("activethief", "jbda", "jbda_tr") else {}
    return {**FAST, **extra, **params}


class Recorder:
    """An oracle endpoint in front of a service that keeps every answered batch (and can refuse
    everything after ``refuse_after`` answered queries, like a detector)."""

    def __init__(self, service: VictimService, refuse_after: int | None = None) -> None:
        self.service = service
        self.refuse_after = refuse_after
        self.batches: list[torch.Tensor] = []
        self.refusals = 0
        self.identity = ""

    def answer(self, attacker_id: str, query_id: str, x: Any) -> Answer | Rejection:
        if self.refuse_after is not None and self.answered >= self.refuse_after:
            self.refusals += 1
            return Rejection("refused", "test detector")
        result = self.service.answer(attacker_id, query_id, x)
        if isinstance(result, Answer):
            self.batches.append(torch.as_tensor(x).clone())
        return result

    def account_status(self, attacker_id: str) -> AccountStatus:
        return self.service.account_status(attacker_id)

    def public_spec(self) -> tuple[InputSpec, OutputSpec]:
        return self.service.public_spec()

    @property
    def answered(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def queries(self) -> torch.Tensor:
        return torch.cat(self.batches)


def steal(
    service: VictimService,
    data: DataSplits,
    name: str,
    params: dict[str, Any],
    budget: int,
    seed: int = 0,
    refuse_after: int | None = None,
    pool: torch.Tensor | None = None,
) -> tuple[nn.Module, Recorder]:
    identity = f"{name}-{params}-{budget}-{seed}-{refuse_after}"
    service.open_account(identity, budget)
    recorder = Recorder(service, refuse_after)
    recorder.identity = identity
    attacker = build_plugin(ATTACKS, name, params)
    model = attacker.steal(
        Oracle(recorder, identity), pool_knowledge(data, pool), np.random.default_rng(seed)
    )
    return model, recorder


def accuracy_on_test(model: nn.Module, data: DataSplits) -> float:
    with torch.no_grad():
        return float((model(data.test.x).argmax(dim=1) == data.test.y).float().mean())


def pool_row_distance(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Each query's L∞ distance to the nearest pool image."""
    flat_q, flat_p = queries.flatten(1), pool.flatten(1)
    return torch.cdist(flat_q, flat_p, p=math.inf).min(dim=1).values


# ---- budgets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [*ATTACK_CASES, ("activethief", {"warm_start": False, "round_epochs": 2})],
    ids=[*CASE_IDS, "from-scratch"],
)
def test_budget_is_spent_exactly_in_batches_the_service_accepts(
    make_service: ServiceFactory, digits_data: DataSplits, name: str, params: dict[str, Any]
) -> None:
    service = make_service(max_batch=32)  # smaller than query_batch: calls must be split
    budget = 157  # not a multiple of anything the attacks use
    _, recorder = steal(service, digits_data, name, fast(name, params), budget)
    assert recorder.answered == budget
    assert max(len(b) for b in recorder.batches) <= 32
    queries = recorder.queries
    assert float(queries.min()) >= 0.0 and float(queries.max()) <= 1.0


@pytest.mark.parametrize(("name", "params"), ATTACK_CASES, ids=CASE_IDS)
def test_spent_budget_gives_an_untrained_model_without_querying(
    make_service: ServiceFactory, digits_data: DataSplits, name: str, params: dict[str, Any]
) -> None:
    model, recorder = steal(make_service(), digits_data, name, fast(name, params), 0)
    assert recorder.answered == 0
    assert not model.training


def test_activethief_never_asks_twice_and_stops_at_the_pool_size(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    pool = digits_data.attacker_pool.x[:120]
    params = fast("activethief", {"strategy": "kcenter"})
    _, recorder = steal(make_service(), digits_data, "activethief", params, 300, pool=pool)
    queries = recorder.queries.flatten(1)
    assert len(queries) == len(pool)
    assert len(torch.unique(queries, dim=0)) == len(torch.unique(pool.flatten(1), dim=0))


def test_round_sizes_split_the_budget() -> None:
    assert round_sizes(1000, 0.1, 5) == [100, 180, 180, 180, 180, 180]
    assert round_sizes(157, 0.1, 4) == [16, 36, 35, 35, 35]
    assert round_sizes(3, 0.5, 4) == [2, 1, 0, 0, 0]
    assert round_sizes(0, 0.1, 3) == [0, 0, 0, 0]
    for budget in (1, 7, 200, 999):
        assert sum(round_sizes(budget, 0.3, 6)) == budget


# ---- JBDA and JBDA-TR queries -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jbda", "jbda_tr"])
def test_jbda_queries_seeds_then_lambda_steps_of_earlier_queries(
    make_service: ServiceFactory, digits_data: DataSplits, name: str
) -> None:
    step, seeds, budget = 0.1, 20, 230
    params = {"seed_size": seeds, "step_size": step, **FAST}
    _, recorder = steal(make_service(), digits_data, name, params, budget)
    queries, pool = recorder.queries, digits_data.attacker_pool.x
    assert len(queries) == budget
    assert float(queries.min()) >= 0.0 and float(queries.max()) <= 1.0

    to_pool = pool_row_distance(queries, pool)
    assert (to_pool[:seeds] == 0).all()  # the seed set is pool images
    assert (to_pool[seeds:] > 0).all()  # everything after it is synthetic

    moved_exactly = 0
    for i in range(seeds, budget):
        child = queries[i].flatten()
        delta = (queries[:i].flatten(1) - child).abs()  # against every earlier query
        exact = (delta - step).abs() < 1e-6
        clipped = ((child == 0) | (child == 1)) & (delta <= step + 1e-6)
        parents = (exact | clipped).all(dim=1).nonzero().flatten()
        assert len(parents) > 0, f"query {i} is not a clipped λ-step of an earlier query"
        moved_exactly += int(exact[parents[0]].sum())
    # digits images are mostly black, so many steps clip at 0; but a real share moves by λ
    assert moved_exactly > 0.2 * (budget - seeds) * queries[0].numel()


def test_jbda_tr_steps_differ_from_jbda_steps(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    params = {"seed_size": 20, **FAST}
    service = make_service()
    _, plain = steal(service, digits_data, "jbda", params, 100)
    _, targeted = steal(service, digits_data, "jbda_tr", params, 100)
    assert torch.equal(plain.queries[:20], targeted.queries[:20])  # same rng, same seed set
    different = (plain.queries[20:] != targeted.queries[20:]).flatten(1).any(dim=1)
    assert float(different.float().mean()) > 0.9


def trained_mlp(data: DataSplits, n: int = 300) -> nn.Module:
    model = build_model("mlp", data.input_shape, data.num_classes, seed=0)
    recipe = TrainRecipe(epochs=20, batch_size=32)
    return train_classifier(model, data.victim_train.x[:n], data.victim_train.y[:n], recipe, 0)


def test_input_gradients_are_per_point_gradients(digits_data: DataSplits) -> None:
    model = trained_mlp(digits_data, 100)
    x, labels = digits_data.test.x[:6], digits_data.test.y[:6]
    batched = input_gradients(model, x, labels, class_logit)
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (single,) = torch.autograd.grad(model(xi)[0, labels[i]], xi)
        torch.testing.assert_close(batched[i : i + 1], single)


def test_jbda_steps_follow_the_label_logit_and_flip_every_tau_rounds(
    digits_data: DataSplits,
) -> None:
    attack = Jbda(step_size=0.01, tau=2)
    assert [attack.signed_step(r) for r in range(6)] == [0.01, 0.01, -0.01, -0.01, 0.01, 0.01]
    model = trained_mlp(digits_data)
    x = digits_data.test.x[:200]
    labels = predict_probs(model, x).argmax(dim=1)
    rng = np.random.default_rng(0)

    def label_logit(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits: torch.Tensor = model(points)
            return logits.gather(1, labels[:, None]).squeeze(1)

    up = attack.augment(model, x, labels, 10, 0, rng)
    down = attack.augment(model, x, labels, 10, 2, rng)
    assert float((label_logit(up) > label_logit(x)).float().mean()) > 0.95
    assert float((label_logit(down) < label_logit(x)).float().mean()) > 0.95


def test_jbda_tr_steps_towards_a_random_other_class(digits_data: DataSplits) -> None:
    model = trained_mlp(digits_data)
    x = digits_data.test.x[:200]
    labels = predict_probs(model, x).argmax(dim=1)
    children = JbdaTR(step_size=0.01).augment(model, x, labels, 10, 0, np.random.default_rng(3))
    # the attack draws its targets from the generator it is given: replay the draw
    shift = torch.from_numpy(np.random.default_rng(3).integers(1, 10, size=len(x)))
    targets = (labels + shift) % 10
    assert (targets != labels).all()
    assert len(torch.unique(targets)) == 10
    with torch.no_grad():
        before = F.cross_entropy(model(x), targets, reduction="none")
        after = F.cross_entropy(model(children), targets, reduction="none")
    assert float((after < before).float().mean()) > 0.95
    gradients = input_gradients(model, x, targets, target_loss)
    torch.testing.assert_close(children, x - 0.01 * gradients.sign())


# ---- ActiveThief selection ----------------------------------------------------------------------


def test_entropy_strategy_picks_the_most_uncertain_images(digits_data: DataSplits) -> None:
    model = trained_mlp(digits_data, 100)
    probs = predict_probs(model, digits_data.attacker_pool.x)
    candidates, queried = probs[50:], probs[:50]
    rng = np.random.default_rng(0)
    picks = ActiveThief(strategy="entropy").select(candidates, queried, 40, rng)
    scores = entropy(candidates)
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[picks] = True
    assert len(set(picks.tolist())) == 40
    assert float(scores[chosen].min()) >= float(scores[~chosen].max())
    random_pick = rng.choice(len(candidates), 40, replace=False)
    assert float(scores[chosen].mean()) > float(scores[random_pick].mean()) + 0.1


picked_entropies: list[tuple[float, float]] = []


class SpyThief(ActiveThief):
    """ActiveThief that logs, per round, the substitute entropy of its picks and of random picks."""

    def select(
        self, candidates: torch.Tensor, queried: torch.Tensor, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        picks = super().select(candidates, queried, k, rng)
        control = np.random.default_rng(len(candidates)).choice(len(candidates), k, replace=False)
        scores = entropy(candidates)
        picked_entropies.append((float(scores[picks].mean()), float(scores[control].mean())))
        return picks


def test_activethief_entropy_queries_higher_entropy_images_than_random(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service()
    oracle = open_oracle(service, "spy", 200)
    picked_entropies.clear()
    SpyThief(strategy="entropy", rounds=4, epochs=3, round_epochs=3).steal(
        oracle, pool_knowledge(digits_data), np.random.default_rng(0)
    )
    assert len(picked_entropies) == 4
    assert all(picked > control for picked, control in picked_entropies)


def test_k_center_greedy_maximises_the_minimum_distance_at_every_pick() -> None:
    generator = torch.Generator().manual_seed(0)
    candidates = torch.rand(60, 3, generator=generator)
    centers = torch.rand(4, 3, generator=generator)
    picks = k_center_greedy(candidates, centers, 12)
    assert len(set(picks.tolist())) == 12
    chosen = centers
    for pick in picks:
        nearest = torch.cdist(candidates, chosen).min(dim=1).values
        assert math.isclose(float(nearest[pick]), float(nearest.max()), rel_tol=1e-6)
        chosen = torch.cat([chosen, candidates[pick : pick + 1]])


def test_k_center_greedy_small_example() -> None:
    candidates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [-4.0, 0.0], [0.0, 0.5]])
    centers = torch.tensor([[0.0, 0.0]])
    # farthest from the origin is -4; then 3 (3 from the origin, 7 from -4); then 1.5 away: 1 or 2
    assert k_center_greedy(candidates, centers, 2).tolist() == [3, 1]
    assert set(k_center_greedy(candidates, centers, 3).tolist()[2:]) <= {0, 2}
    assert k_center_greedy(candidates, torch.empty(0, 2), 5).tolist()[0] in range(5)


# ---- learning and determinism -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), ATTACK_CASES, ids=CASE_IDS)
def test_each_attack_learns_the_digits_victim(
    make_service: ServiceFactory, digits_data: DataSplits, name: str, params: dict[str, Any]
) -> None:
    model, _ = steal(make_service(), digits_data, name, params, 300)
    # measured with the defaults at 300 queries over seeds 0-4 (chance is 0.1; the victim ~0.95):
    # jbda and jbda_tr 0.70-0.86, activethief 0.92-0.95 with every strategy
    assert accuracy_on_test(model, digits_data) > (0.85 if name == "activethief" else 0.6)


@pytest.mark.parametrize("name", ["jbda", "activethief"])
def test_soft_labels_learn_through_a_top3_api(
    make_service: ServiceFactory, digits_data: DataSplits, name: str
) -> None:
    service = make_service([PluginSpec(name="top_k", params={"k": 3})])
    model, _ = steal(service, digits_data, name, {"soft_labels": True}, 300)
    assert accuracy_on_test(model, digits_data) > 0.6


@pytest.mark.parametrize(("name", "params"), ATTACK_CASES[:4], ids=CASE_IDS[:4])
def test_same_rng_gives_identical_substitute(
    make_service: ServiceFactory, digits_data: DataSplits, name: str, params: dict[str, Any]
) -> None:
    first, _ = steal(make_service(), digits_data, name, fast(name, params), 120, seed=5)
    second, _ = steal(make_service(), digits_data, name, fast(name, params), 120, seed=5)
    other, _ = steal(make_service(), digits_data, name, fast(name, params), 120, seed=6)
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    pairs = zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


# ---- parameters and refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("jbda", {"seed_size": 0}),
        ("jbda", {"step_size": 0.0}),
        ("jbda", {"step_size": float("nan")}),
        ("jbda", {"tau": 0}),
        ("jbda", {"round_epochs": 2.5}),
        ("jbda", {"soft_labels": "yes"}),
        ("jbda_tr", {"tau": 3}),  # the targeted variant has no periodic step
        ("jbda_tr", {"lr": 0}),
        ("activethief", {"strategy": "dfal"}),
        ("activethief", {"initial_fraction": 0.0}),
        ("activethief", {"initial_fraction": 1.5}),
        ("activethief", {"rounds": 0}),
        ("activethief", {"round_epochs": 0}),
        ("activethief", {"query_batch": True}),
        ("activethief", {"warm_start": 1}),
    ],
)
def test_bad_parameters_raise_invalid_parameters(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(ATTACKS, name, params)


def test_prada_refusal_ends_jbda_without_crashing(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service([PluginSpec(name="prada", params={"response": "refuse"})])
    # the final substitute trains from scratch on the few dozen answers: 50 epochs, not FAST's 2
    params = {"seed_size": 20, "round_epochs": 2, "epochs": 50}
    model, recorder = steal(service, digits_data, "jbda", params, 1000)
    stats = service.account_stats(recorder.identity)
    assert stats.detected_after is not None
    assert recorder.answered == stats.used < 1000
    assert stats.refused_batches == 1  # the attack stopped at the first refusal
    assert not model.training
    assert accuracy_on_test(model, digits_data) > 0.2


@pytest.mark.parametrize(("name", "params"), ATTACK_CASES, ids=CASE_IDS)
def test_a_refusal_mid_attack_ends_querying_and_keeps_the_answers(
    make_service: ServiceFactory, digits_data: DataSplits, name: str, params: dict[str, Any]
) -> None:
    model, recorder = steal(make_service(), digits_data, name, params, 300, refuse_after=130)
    assert 130 <= recorder.answered < 300
    assert recorder.refusals == 1
    assert not model.training
    # trained on the ~140-200 answers it got (measured 0.56-0.68 for jbda, >= 0.87 activethief)
    assert accuracy_on_test(model, digits_data) > 0.4
