"""InI (isolation and induction): the trained victim keeps its benign accuracy, answers proxy
stealing queries uninformatively, isolates a thief's gradient from the expected one, is cached on
its training hyperparameters, and plays a real match; bad hyperparameters fail at config load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from arena_testkit import match_spec

from arena.data import DataSplits, Split
from arena.defenses import DEFENSES
from arena.defenses import ini as ini_module
from arena.defenses.ini import InI, pcgrad_combine, soft_cross_entropy, stealing_proxies
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.referee import play_match
from arena.registry import build_plugin
from arena.specs import VictimSpec
from arena.training import accuracy, predict_probs
from arena.victims import TrainedVictim

TRAINED_EPOCHS = 20
"""digits has 1,000 training images (8 steps an epoch): 160 InI steps, a few seconds"""
ACCURACY_MARGIN = 0.08
"""the InI victim's benign test accuracy stays within this of the undefended victim's"""


def digits_context(
    data: DataSplits, cache: Path | None = None, train: Split | None = None
) -> PrepareContext:
    split = data.victim_train if train is None else train
    return PrepareContext("digits-ini", "mlp", data.input_shape, data.num_classes, split, 0, cache)


def entropy(probs: torch.Tensor) -> float:
    return float(-(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean())


def thief_gradient_cosine(model: torch.nn.Module, data: DataSplits, seed: int) -> float:
    """Cosine between the gradient a fresh random substitute gets from ``model``'s answers on the
    test images and the gradient their true labels would give it."""
    substitute = build_model("mlp", data.input_shape, data.num_classes, seed)
    x, y = data.test.x, data.test.y
    with torch.no_grad():
        answers = model(x)
    weights = list(substitute.parameters())
    expected = torch.autograd.grad(F.cross_entropy(substitute(x), y), weights)
    thief = torch.autograd.grad(soft_cross_entropy(substitute(x), answers), weights)
    flat_e, flat_t = (
        torch.cat([g.flatten() for g in expected]),
        torch.cat([g.flatten() for g in thief]),
    )
    return float(F.cosine_similarity(flat_t, flat_e, dim=0))


@pytest.fixture(scope="module")
def ini_victim(digits_data: DataSplits, digits_victim: TrainedVictim) -> torch.nn.Module:
    defense = build_plugin(DEFENSES, "ini", {"epochs": TRAINED_EPOCHS})
    context = digits_context(digits_data)
    return defense.prepare(digits_victim.model, context)


def test_keeps_benign_accuracy(
    ini_victim: torch.nn.Module, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    test = digits_data.test
    undefended = accuracy(predict_probs(digits_victim.model, test.x), test.y)
    defended = accuracy(predict_probs(ini_victim, test.x), test.y)
    assert undefended > 0.9
    assert defended >= undefended - ACCURACY_MARGIN, (defended, undefended)


def test_answers_stealing_queries_uninformatively(
    ini_victim: torch.nn.Module, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    test = digits_data.test
    # held-out proxies: made from the test images, with a seed training never used
    proxies = stealing_proxies(Split(test.x, test.y), "mixed", seed=424242)
    noise = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    max_entropy = math.log(digits_data.num_classes)
    for queries in (proxies, noise):
        before = entropy(predict_probs(digits_victim.model, queries))
        after = entropy(predict_probs(ini_victim, queries))
        assert after > before + 0.8, (before, after)
        assert after > 0.6 * max_entropy
    # benign images keep a clear answer: the outputs are not uninformative everywhere
    assert entropy(predict_probs(ini_victim, test.x)) < 0.5 * max_entropy


def test_isolates_the_thiefs_gradient(
    ini_victim: torch.nn.Module, digits_victim: TrainedVictim, digits_data: DataSplits
) -> None:
    """Substitutes it never trained against (other seeds) get a gradient from its answers that
    points measurably away from the expected one; from the undefended victim, almost along it."""
    for seed in (11, 12):
        before = thief_gradient_cosine(digits_victim.model, digits_data, seed)
        after = thief_gradient_cosine(ini_victim, digits_data, seed)
        assert before > 0.95
        assert after < before - 0.15, (before, after)


def test_served_as_is(ini_victim: torch.nn.Module, digits_data: DataSplits) -> None:
    defense = build_plugin(DEFENSES, "ini", {})
    probs = predict_probs(ini_victim, digits_data.test.x[:50])
    assert torch.equal(defense.respond(probs, digits_data.test.x[:50], None), probs)
    assert InI.needs_training and not InI.preserves_argmax


def small_context(data: DataSplits, cache: Path) -> PrepareContext:
    train = Split(data.victim_train.x[:200], data.victim_train.y[:200])
    return digits_context(data, cache, train)


def test_trained_model_is_cached(
    digits_data: DataSplits,
    digits_victim: TrainedVictim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context = small_context(digits_data, tmp_path)
    defense = build_plugin(DEFENSES, "ini", {"epochs": 1})
    first = defense.prepare(digits_victim.model, context)
    files = list(tmp_path.glob("defense-ini-*.pt"))
    assert len(files) == 1 and list(tmp_path.glob("*.tmp")) == []

    def no_training(*args: Any) -> None:
        raise AssertionError("a cached InI victim was trained again")

    monkeypatch.setattr(ini_module, "train_ini", no_training)
    again = build_plugin(DEFENSES, "ini", {"epochs": 1}).prepare(digits_victim.model, context)
    for mine, theirs in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert not any(
        torch.equal(a, b)
        for a, b in zip(  # and it did train
            first.state_dict().values(), digits_victim.model.state_dict().values(), strict=True
        )
    )


CHANGES: list[dict[str, Any]] = [
    {"gamma": 0.5},
    {"delta": 2.0},
    {"epsilon": 10.0},
    {"beta": 0.1},
    {"induction": "entropy"},
    {"adversary_loss": "reverse_kl"},
    {"proxies": "noise"},
    {"pcgrad": False},
    {"warm_start": False},
    {"epochs": 2},
    {"lr": 0.003},
    {"seed": 1},
    {"optimizer": "sgd"},
    {"step_epochs": 5},
]


def test_every_training_hyperparameter_changes_the_cache_key(
    digits_data: DataSplits,
    digits_victim: TrainedVictim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained: list[dict[str, Any]] = []
    monkeypatch.setattr(ini_module, "train_ini", lambda *a: trained.append(a[-1].params()))
    context = small_context(digits_data, tmp_path)
    model = digits_victim.model
    for change in [{}, *CHANGES]:
        build_plugin(DEFENSES, "ini", {"epochs": 1, **change}).prepare(model, context)
    assert len(trained) == len(CHANGES) + 1
    assert len(list(tmp_path.glob("defense-ini-*.pt"))) == len(CHANGES) + 1
    # a warm start from other weights is another model too; the same one is found again
    other = build_model("mlp", (1, 8, 8), 10, seed=3)
    build_plugin(DEFENSES, "ini", {"epochs": 1}).prepare(other, context)
    build_plugin(DEFENSES, "ini", {"epochs": 1}).prepare(model, context)
    assert len(trained) == len(CHANGES) + 2


BAD: list[dict[str, Any]] = [
    {"gamma": -0.1},
    {"delta": float("nan")},
    {"epsilon": float("inf")},
    {"beta": "0"},
    {"gamma": True},
    {"lr": 0},
    {"epochs": 0},
    {"epochs": 1.5},
    {"seed": -1},
    {"induction": "uniform"},
    {"adversary_loss": "kl"},
    {"proxies": "out_of_distribution"},
    {"pcgrad": "yes"},
    {"warm_start": 1},
    {"optimizer": "adamw"},
    {"step_epochs": 0},
    {"alpha": 1.0},
]


@pytest.mark.parametrize("params", BAD, ids=[str(p) for p in BAD])
def test_bad_hyperparameters_fail_at_config_load(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters, match="ini"):
        build_plugin(DEFENSES, "ini", params)


def test_the_release_schedule_divides_the_rate_by_ten_every_step_epochs() -> None:
    weights = [torch.nn.Parameter(torch.zeros(2))]
    release = InI(optimizer="sgd", lr=0.1, step_epochs=2)
    sgd, schedule = ini_module.optimiser(weights, release, per_epoch=3)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5
    rates = []
    for _ in range(13):
        rates.append(sgd.param_groups[0]["lr"])
        sgd.step()
        schedule.step()
    assert rates == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001])
    adam, _ = ini_module.optimiser(weights, InI(), per_epoch=3)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 0.001


def test_proxies_come_from_the_defenders_images(digits_data: DataSplits) -> None:
    train = digits_data.victim_train
    proxies = stealing_proxies(train, "mixed", seed=0)
    assert proxies.shape == train.x.shape and proxies.dtype == torch.float32
    assert proxies.min() >= 0 and proxies.max() <= 1
    assert not (proxies == train.x).all(dim=(1, 2, 3)).any()  # every proxy differs from its image
    torch.testing.assert_close(stealing_proxies(train, "mixed", seed=0), proxies)
    assert not torch.equal(stealing_proxies(train, "mixed", seed=1), proxies)
    shuffled = stealing_proxies(train, "shuffle", seed=0)  # pixels moved, none invented
    for image, proxy in zip(train.x[:20], shuffled[:20], strict=True):
        assert torch.equal(image.flatten().sort().values, proxy.flatten().sort().values)


def test_pcgrad_projects_only_conflicting_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    conflicting = [[torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]]
    (merged,) = pcgrad_combine(conflicting, generator)
    # [1, 0] loses its part along [-1, 1] -> [0.5, 0.5]; [-1, 1] loses its part along [1, 0]
    # -> [0, 1]; the two are averaged
    torch.testing.assert_close(merged, torch.tensor([0.25, 0.75]))
    agreeing = [[torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]]
    (merged,) = pcgrad_combine(agreeing, generator)
    torch.testing.assert_close(merged, torch.tensor([1.0, 0.5]))


def test_plays_a_real_match(
    digits_data: DataSplits, victim_cache: Path, digits_victim_spec: VictimSpec
) -> None:
    spec = match_spec(digits_victim_spec, ["ini"], "knockoff", budget=300)
    r = play_match(spec, digits_data, victim_cache)
    assert r.defense == "ini" and r.attack == "knockoff" and r.queries_used == 300
    for value in (r.victim_accuracy, r.utility, r.stolen_accuracy, r.fidelity):
        assert 0.0 <= value <= 1.0
    for value in (r.perturbation_l1, r.perturbation_kl, r.latency_ratio, r.attack_seconds):
        assert math.isfinite(value) and value >= 0
    assert r.utility > 0.8
    assert list(victim_cache.glob("defense-ini-*.pt"))  # cached beside the victim
