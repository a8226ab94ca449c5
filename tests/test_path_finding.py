"""Decision-tree victims (arena.trees) and the path-finding attack (agents.path_finding) on digits.

Tramèr et al. (USENIX Security 2016) steal trees from leaf-identifying confidences; these tests
check the victim serves such confidences through the usual cache and service, and that the
attack rebuilds the tree exactly within a stated budget, stays within any budget, and runs
through the referee.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from arena_testkit import as_plugin_specs, match_spec, open_oracle
from pydantic import ValidationError
from sklearn.tree import DecisionTreeClassifier
from torch import nn

from agents._leaf_boxes import BoxLookup
from agents.path_finding import PathFinding
from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.defenses.chain import build_chain
from arena.errors import InvalidParameters
from arena.knowledge import Knowledge
from arena.models import build_model
from arena.oracle import InputSpec
from arena.referee import play_match
from arena.registry import build_plugin
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import VictimSpec
from arena.trees import DecisionTreeModule
from arena.victims import TrainedVictim, cache_path, load_or_train
from orchestration.config import ConfigError, parse_config

DEPTH = 6
FULL_BUDGET = 6000
"""what path finding may spend on the depth-6 digits tree (it needs about half)"""


@pytest.fixture(scope="module")
def tree_spec() -> VictimSpec:
    return VictimSpec(dataset="digits", arch="decision_tree", max_depth=DEPTH)


@pytest.fixture(scope="module")
def tree_victim(
    tree_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> TrainedVictim:
    return load_or_train(tree_spec, digits_data, victim_cache)


def knowledge(data: DataSplits) -> Knowledge:
    return Knowledge(
        pool=None,
        pool_name="none",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        substitute_arch="decision_tree",
    )


def labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    return float((labels(a, x) == labels(b, x)).float().mean())


def steal(
    victim: TrainedVictim,
    data: DataSplits,
    budget: int,
    defenses: tuple[str, ...] = (),
    params: dict[str, object] | None = None,
    seed: int = 0,
    max_batch: int = 1024,
) -> tuple[nn.Module, int]:
    """Run path finding against ``victim`` in this process; the substitute and queries charged."""
    input_spec = InputSpec(shape=data.input_shape, max_batch=max_batch)
    chain = build_chain(as_plugin_specs(defenses))
    service = VictimService(victim.model, chain, input_spec, data.num_classes)
    oracle = open_oracle(service, "thief", budget)
    attacker = build_plugin(ATTACKS, "path_finding", params or {})
    model = attacker.steal(oracle, knowledge(data), np.random.default_rng(seed))
    used = service.account_stats("thief").used
    assert oracle.used == used
    return model, used


# ---- the victim --------------------------------------------------------------------------------


def test_tree_victim_is_cached_and_matches_scikit_learn(
    tree_spec: VictimSpec, tree_victim: TrainedVictim, digits_data: DataSplits, victim_cache: Path
) -> None:
    assert cache_path(tree_spec, victim_cache).is_file()
    again = load_or_train(tree_spec, digits_data, victim_cache)
    assert again.from_cache and isinstance(again.model, DecisionTreeModule)
    assert again.test_accuracy == tree_victim.test_accuracy

    x = digits_data.victim_train.x.flatten(1).numpy()
    reference = DecisionTreeClassifier(max_depth=DEPTH, random_state=0)
    reference.fit(x, digits_data.victim_train.y.numpy())
    test = digits_data.test.x
    expected = reference.predict(test.flatten(1).numpy())
    assert np.array_equal(labels(again.model, test).numpy(), expected)
    assert again.model.leaf_count() == reference.get_n_leaves()

    # answers are the reached leaf's Laplace-smoothed class counts, through the served softmax
    service = build_service(tree_spec, (), digits_data, victim_cache)
    answers = torch.tensor(service.reference_outputs(test).undefended)
    leaves = reference.apply(test.flatten(1).numpy())
    structure = reference.tree_
    counts = structure.value[leaves, 0, :] * structure.weighted_n_node_samples[leaves, None]
    smoothed = (counts + 1) / (counts.sum(axis=1, keepdims=True) + digits_data.num_classes)
    assert np.allclose(answers.numpy(), smoothed, atol=1e-6)
    # one answer per leaf, bit for bit: the answer identifies the leaf (up to count collisions)
    for leaf in np.unique(leaves):
        assert len({answers[i].numpy().tobytes() for i in np.flatnonzero(leaves == leaf)}) == 1


def test_tree_arch_cannot_be_built_untrained(digits_data: DataSplits) -> None:
    with pytest.raises(InvalidParameters, match="neural architecture"):
        build_model("decision_tree", digits_data.input_shape, digits_data.num_classes)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arch": "decision_tree"}, "needs max_depth"),
        ({"arch": "decision_tree", "max_depth": 0}, "greater than or equal to 1"),
        ({"arch": "decision_tree", "max_depth": 17}, "less than or equal to 16"),
        ({"arch": "decision_tree", "max_depth": 2.5}, "valid integer"),
        ({"arch": "mlp", "max_depth": 4}, "applies to arch 'decision_tree' only"),
    ],
)
def test_bad_max_depth_fails_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        VictimSpec(dataset="digits", **fields)  # type: ignore[arg-type]
    raw = {
        "name": "trees",
        "victims": [{"dataset": "digits", **fields}],
        "defenses": [["none"]],
        "attacks": ["path_finding"],
        "budgets": [100],
    }
    with pytest.raises(ConfigError, match=r"victims\.0") as info:
        parse_config(raw)
    assert "max_depth" in str(info.value)


def test_tree_victims_pass_config_validation() -> None:
    raw = {
        "name": "trees",
        "victims": [{"dataset": "digits", "arch": "decision_tree", "max_depth": 5}],
        "defenses": [["none"]],
        "attacks": ["path_finding"],
        "budgets": [100],
    }
    assert parse_config(raw).victims[0].max_depth == 5


def test_existing_victim_keys_are_unchanged() -> None:
    # keys these specs had before max_depth existed (a changed key would orphan cached victims
    # and finished matches)
    assert VictimSpec().key() == "0ca814ff7df615c8"
    assert VictimSpec(dataset="digits", arch="mlp", epochs=20).key() == "d842788903f713da"
    spec = VictimSpec(dataset="digits", arch="softmax_regression", train_size=500, seed=3)
    assert "max_depth" not in spec.model_dump(mode="json")
    form = spec.model_dump(mode="json", context={"key": True})  # versions at 1 left out
    canonical = json.dumps(form, sort_keys=True, separators=(",", ":"))
    assert spec.key() == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    depths = {VictimSpec(arch="decision_tree", max_depth=d).key() for d in (4, 5, 6)}
    assert len(depths) == 3


# ---- the attack --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [4, DEPTH])
def test_path_finding_rebuilds_the_tree_on_the_whole_test_set(
    depth: int, digits_data: DataSplits, victim_cache: Path
) -> None:
    spec = VictimSpec(dataset="digits", arch="decision_tree", max_depth=depth)
    victim = load_or_train(spec, digits_data, victim_cache)
    substitute, used = steal(victim, digits_data, FULL_BUDGET)
    assert 0 < used < FULL_BUDGET  # it finished: every leaf explored before the budget ran out
    assert agreement(substitute, victim.model, digits_data.test.x) == 1.0
    assert isinstance(victim.model, DecisionTreeModule) and isinstance(substitute, BoxLookup)
    assert substitute.num_boxes == victim.model.leaf_count()
    # and beyond the test set: uniform random inputs land in the same leaves
    noise = torch.rand(2000, *digits_data.input_shape, generator=torch.Generator().manual_seed(1))
    assert agreement(substitute, victim.model, noise) == 1.0


@pytest.mark.parametrize("budget", [1, 50, 400])
def test_small_budget_gives_a_partial_model_within_budget(
    budget: int, tree_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    substitute, used = steal(tree_victim, digits_data, budget, max_batch=7)  # many small calls
    assert used <= budget
    assert not substitute.training
    with torch.no_grad():
        logits = substitute(digits_data.test.x)
    assert logits.shape == (len(digits_data.test.x), digits_data.num_classes)
    assert torch.isfinite(logits).all()
    assert agreement(substitute, tree_victim.model, digits_data.test.x) < 1.0


def test_more_budget_explores_more(tree_victim: TrainedVictim, digits_data: DataSplits) -> None:
    scores = [
        agreement(steal(tree_victim, digits_data, b)[0], tree_victim.model, digits_data.test.x)
        for b in (300, 1500)
    ]
    assert scores[0] < scores[1] < 1.0


def test_same_rng_gives_the_same_theft(tree_victim: TrainedVictim, digits_data: DataSplits) -> None:
    first, used_first = steal(tree_victim, digits_data, 800, seed=3)
    second, used_second = steal(tree_victim, digits_data, 800, seed=3)
    assert used_first == used_second
    with torch.no_grad():
        assert torch.equal(first(digits_data.test.x), second(digits_data.test.x))


def test_coarse_tolerance_is_cheaper(tree_victim: TrainedVictim, digits_data: DataSplits) -> None:
    _, exact = steal(tree_victim, digits_data, FULL_BUDGET)
    coarse_model, coarse = steal(tree_victim, digits_data, FULL_BUDGET, params={"tolerance": 1e-3})
    assert coarse < exact
    assert agreement(coarse_model, tree_victim.model, digits_data.test.x) > 0.98


def test_label_only_answers_degrade_without_crashing(
    tree_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    substitute, used = steal(tree_victim, digits_data, 3000, defenses=("label_only",))
    assert 0 < used <= 3000
    # leaves of one class merge, so the boxes are approximate, but far better than chance
    assert agreement(substitute, tree_victim.model, digits_data.test.x) > 0.5


@pytest.mark.parametrize(
    "params", [{"tolerance": -0.1}, {"tolerance": 1}, {"start_points": 0}, {"epochs": 3}]
)
def test_bad_hyperparameters_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(ATTACKS, "path_finding", params)
    assert PathFinding().tolerance == 0.0


def test_plays_a_match_against_a_tree_victim(
    tree_spec: VictimSpec, tree_victim: TrainedVictim, digits_data: DataSplits, victim_cache: Path
) -> None:
    spec = match_spec(tree_spec, ["none"], "path_finding", {}, FULL_BUDGET)
    result = play_match(spec, digits_data, victim_cache)
    assert result.victim_arch == "decision_tree"
    assert result.victim_accuracy == pytest.approx(tree_victim.test_accuracy)
    assert result.fidelity == 1.0
    assert result.stolen_accuracy == pytest.approx(result.victim_accuracy)
    assert 0 < result.queries_used < FULL_BUDGET


def test_output_defenses_work_on_a_tree_victim(
    tree_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    spec = match_spec(tree_spec, ["reverse_sigmoid"], "path_finding", {}, 500)
    result = play_match(spec, digits_data, victim_cache)
    assert result.perturbation_l1 > 0
    assert result.queries_used <= 500
    assert 0 <= result.fidelity <= 1


def test_defenses_that_train_a_neural_copy_refuse_clearly(
    tree_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    spec = match_spec(tree_spec, ["adaptive_misinformation"], "path_finding", {}, 100)
    with pytest.raises(InvalidParameters, match="decision_tree"):
        play_match(spec, digits_data, victim_cache)
