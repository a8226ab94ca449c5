"""Every registered defense honours the Defense contract (DESIGN §3); the built-ins compute what
their papers say."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

from arena.data import Split
from arena.defenses import (
    DEFENSES,
    Choice,
    Defense,
    DefenseChain,
    FloatRange,
    IntRange,
    build_chain,
)
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters, UnknownPlugin
from arena.registry import build_plugin
from arena.specs import PluginSpec

C = 10
NAMES = DEFENSES.names()


def softmax_rows(n: int, scale: float, seed: int) -> torch.Tensor:
    logits = np.random.default_rng(seed).normal(size=(n, C)) * scale
    return torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=1)


def tiny_rows(value: float) -> torch.Tensor:
    """Rows with one dominant class and every other entry equal to ``value``."""
    rows = torch.full((C, C), value, dtype=torch.float32)
    rows[torch.arange(C), torch.arange(C)] = 1.0 - (C - 1) * value
    return rows


def extreme_probs() -> torch.Tensor:
    """Softmax batches from gentle to degenerate, each row summing to one."""
    tie = torch.zeros(2, C)
    tie[0, :2] = 0.5
    tie[1, [3, 7]] = 0.5
    parts = [
        softmax_rows(64, 1.0, seed=0),
        softmax_rows(64, 4.0, seed=1),
        softmax_rows(32, 40.0, seed=2),  # one-hot-ish
        torch.eye(C),  # exact one-hot
        torch.full((3, C), 1.0 / C),  # uniform
        tiny_rows(1e-30),
        tiny_rows(1e-40),  # float32 denormals
        tiny_rows(1e-7),
        tie,
    ]
    probs = torch.cat(parts)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-6)
    return probs


def inputs_for(probs: torch.Tensor) -> torch.Tensor:
    return torch.rand(len(probs), 1, 8, 8, generator=torch.Generator().manual_seed(0))


def assert_probability_rows(out: torch.Tensor, n: int) -> None:
    assert isinstance(out, torch.Tensor)
    assert out.shape == (n, C)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(n), atol=1e-5, rtol=0)


def tiny_context() -> PrepareContext:
    """A small task of 1x8x8 inputs for defenses that train or build models in ``prepare``."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(256, 1, 8, 8, generator=generator)
    y = torch.randint(0, C, (256,), generator=generator)
    return PrepareContext("tiny", "mlp", (1, 8, 8), C, Split(x, y), seed=0)


def prepared(defense: Defense) -> Defense:
    """The defense after its ``prepare`` hook, as the service would serve it."""
    context = tiny_context()
    defense.prepare(context.new_model(), context)
    return defense


def respond(defense: Defense, probs: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    if not defense.models and DefenseChain((defense,)).needs_preparation:
        prepared(defense)
    inputs = inputs_for(probs) if x is None else x
    return defense.respond(probs.clone(), inputs, defense.new_state())


def init_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


# ---- the contract, over every registered name ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_defaults_give_probability_rows(name: str) -> None:
    defense = build_plugin(DEFENSES, name, {})
    probs = extreme_probs()
    out = respond(defense, probs)
    assert_probability_rows(out, len(probs))


@pytest.mark.parametrize("name", NAMES)
def test_respond_is_vectorised_and_deterministic(name: str) -> None:
    """Answering the batch at once equals answering it in two halves (stateless defenses), and
    the same input gives the same output."""
    defense = build_plugin(DEFENSES, name, {})
    probs = softmax_rows(40, 2.0, seed=5)
    whole = respond(defense, probs)
    torch.testing.assert_close(respond(defense, probs), whole, atol=0, rtol=0)
    if not type(defense).stateful:
        x = inputs_for(probs)
        first, second = respond(defense, probs[:17], x[:17]), respond(defense, probs[17:], x[17:])
        halves = torch.cat([first, second])
        torch.testing.assert_close(halves, whole, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_argmax_flag_is_honest(name: str) -> None:
    defense = build_plugin(DEFENSES, name, {})
    probs = extreme_probs()
    top2 = probs.topk(2, dim=1).values
    strict = top2[:, 0] > top2[:, 1]  # rows with a unique argmax
    assert strict.sum() > 100
    out = respond(defense, probs)
    same = out.argmax(dim=1) == probs.argmax(dim=1)
    if type(defense).preserves_argmax:
        assert same[strict].all()
    else:
        # Not claimed, so nothing to enforce; but the flag must be a real bool either way.
        assert type(defense).preserves_argmax is False


@pytest.mark.parametrize("name", NAMES)
def test_is_a_frozen_dataclass(name: str) -> None:
    cls = DEFENSES.get(name)
    assert isinstance(cls, type) and issubclass(cls, Defense)
    assert dataclasses.is_dataclass(cls)
    defense = build_plugin(DEFENSES, name, {})
    for field in init_fields(cls) | {"not_a_field"}:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(defense, field, 0.5)
    assert defense.params() == {f: getattr(defense, f) for f in init_fields(cls)}
    flags = (
        "preserves_argmax",
        "stateful",
        "detector",
        "needs_training",
        "answers_labels_only",
        "zoo_only",
    )
    for flag in flags:
        assert isinstance(getattr(cls, flag), bool)


@pytest.mark.parametrize("name", NAMES)
def test_has_its_own_docstring(name: str) -> None:
    cls = DEFENSES.get(name)
    doc = (cls.__doc__ or "").strip()
    assert doc, f"{name} has no docstring (shown by `arena list`)"
    assert not doc.startswith(f"{cls.__name__}("), "only the auto-generated dataclass docstring"
    assert doc != (Defense.__doc__ or "").strip(), "inherited from the base class"
    assert DEFENSES.describe()[name] == doc.splitlines()[0]


@pytest.mark.parametrize("name", NAMES)
def test_search_space_is_plain_data_over_real_fields(name: str) -> None:
    cls = DEFENSES.get(name)
    assert isinstance(cls.search_space, dict)
    assert set(cls.search_space) <= init_fields(cls)
    for param, space in cls.search_space.items():
        assert isinstance(space, FloatRange | IntRange | Choice), param
        if isinstance(space, FloatRange):
            assert math.isfinite(space.low) and math.isfinite(space.high)
            assert space.low < space.high
            assert not space.log or space.low > 0
        elif isinstance(space, IntRange):
            assert isinstance(space.low, int) and isinstance(space.high, int)
            assert space.low <= space.high
        else:
            assert len(space.options) >= 1


def search_space_bounds() -> list[tuple[str, str, Any]]:
    cases: list[tuple[str, str, Any]] = []
    for name in NAMES:
        for param, space in DEFENSES.get(name).search_space.items():
            if isinstance(space, FloatRange | IntRange):
                cases += [(name, param, space.low), (name, param, space.high)]
            else:
                cases += [(name, param, option) for option in space.options]
    return cases


BOUNDS = search_space_bounds()


def test_search_spaces_are_not_all_empty() -> None:
    assert len(BOUNDS) >= 4  # reverse_sigmoid (beta, gamma) and rounding (decimals)


@pytest.mark.parametrize(
    ("name", "param", "value"), BOUNDS, ids=[f"{n}-{p}={v}" for n, p, v in BOUNDS]
)
def test_every_search_space_bound_builds_a_working_defense(
    name: str, param: str, value: Any
) -> None:
    defense = build_plugin(DEFENSES, name, {param: value})
    assert getattr(defense, param) == value
    probs = extreme_probs()
    assert_probability_rows(respond(defense, probs), len(probs))


def test_chain_of_every_defense_gives_probability_rows() -> None:
    chain = build_chain([PluginSpec(name=n) for n in NAMES])
    context = tiny_context()
    chain.prepare(context.new_model(), context)
    probs = extreme_probs()
    out, seconds, _ = chain.respond(probs, inputs_for(probs), chain.new_states())
    assert_probability_rows(out, len(probs))
    assert len(seconds) == len(NAMES) and all(s >= 0 for s in seconds)
    assert chain.preserves_argmax == all(DEFENSES.get(n).preserves_argmax for n in NAMES)


def test_empty_chain_returns_raw_probabilities() -> None:
    chain = build_chain([])
    probs = softmax_rows(8, 2.0, seed=0)
    out, seconds, _ = chain.respond(probs, inputs_for(probs), chain.new_states())
    assert torch.equal(out, probs) and seconds == []
    assert chain.preserves_argmax


# ---- the built-ins ---------------------------------------------------------------------------


def test_none_returns_probabilities_unchanged() -> None:
    probs = extreme_probs()
    assert torch.equal(respond(build_plugin(DEFENSES, "none", {}), probs), probs)


def reverse_sigmoid_reference(y: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """Lee et al. 2019, written independently: y - beta*(sigmoid(gamma*logit(y)) - 1/2),
    clipped at zero and renormalised per row."""
    logit = np.log(y) - np.log1p(-y)
    r = beta * (1.0 / (1.0 + np.exp(-gamma * logit)) - 0.5)
    out = np.maximum(y - r, 0.0)
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / y.shape[1])


@pytest.mark.parametrize(
    ("beta", "gamma"), [(1.0, 0.1), (0.05, 0.01), (2.0, 1.0), (0.5, 0.3), (2.0, 0.01)]
)
def test_reverse_sigmoid_matches_the_formula(beta: float, gamma: float) -> None:
    probs = torch.cat([softmax_rows(200, 1.5, seed=3), softmax_rows(50, 3.0, seed=4)])
    assert probs.min() > 1e-8 and probs.max() < 1 - 1e-6  # away from the implementation's clip
    defense = build_plugin(DEFENSES, "reverse_sigmoid", {"beta": beta, "gamma": gamma})
    out = respond(defense, probs).numpy()
    expected = reverse_sigmoid_reference(probs.numpy().astype(np.float64), beta, gamma)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    assert np.abs(out - probs.numpy()).sum(axis=1).mean() > 1e-3  # it does perturb


def test_reverse_sigmoid_defaults() -> None:
    defense = build_plugin(DEFENSES, "reverse_sigmoid", {})
    assert (defense.beta, defense.gamma) == (1.0, 0.1)
    probs = softmax_rows(100, 2.0, seed=6)
    expected = reverse_sigmoid_reference(probs.numpy().astype(np.float64), 1.0, 0.1)
    np.testing.assert_allclose(respond(defense, probs).numpy(), expected, atol=1e-5, rtol=0)


def test_reverse_sigmoid_larger_beta_perturbs_more() -> None:
    probs = softmax_rows(300, 2.0, seed=7)
    l1 = []
    for beta in (0.05, 0.2, 0.5, 1.0, 2.0):
        out = respond(build_plugin(DEFENSES, "reverse_sigmoid", {"beta": beta}), probs)
        l1.append(float((out - probs).abs().sum(dim=1).mean()))
    assert all(a < b for a, b in itertools.pairwise(l1)), l1
    assert l1[0] > 0


@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_rounding_is_round_then_renormalise(decimals: int) -> None:
    probs = extreme_probs()
    out = respond(build_plugin(DEFENSES, "rounding", {"decimals": decimals}), probs).numpy()
    p = probs.numpy()
    rounded = np.round(p, decimals)
    expected = rounded / rounded.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    # Before renormalisation every value was a multiple of 10^-decimals.
    scaled = out * rounded.sum(axis=1, keepdims=True) * 10**decimals
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)


def test_rounding_one_decimal_is_coarse() -> None:
    probs = softmax_rows(200, 1.0, seed=8)
    out = respond(build_plugin(DEFENSES, "rounding", {"decimals": 1}), probs).numpy()
    p = probs.numpy()
    rounded = np.round(p, 1)
    np.testing.assert_allclose(out, rounded / rounded.sum(axis=1, keepdims=True), atol=1e-6)
    assert len(np.unique(np.round(rounded, 6))) <= 11  # only 0.0, 0.1, ..., 1.0 before scaling
    assert not np.allclose(out, p, atol=1e-3)


def test_label_only_gives_one_hot_rows_at_the_argmax() -> None:
    probs = extreme_probs()
    out = respond(build_plugin(DEFENSES, "label_only", {}), probs)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.sum(dim=1), torch.ones(len(probs)))
    assert torch.equal(out.argmax(dim=1), probs.argmax(dim=1))
    assert DEFENSES.get("label_only").answers_labels_only


BAD_PARAMS: list[tuple[str, dict[str, Any]]] = [
    ("reverse_sigmoid", {"beta": -1}),
    ("reverse_sigmoid", {"beta": 0}),
    ("reverse_sigmoid", {"beta": float("nan")}),
    ("reverse_sigmoid", {"beta": float("inf")}),
    ("reverse_sigmoid", {"beta": "1"}),
    ("reverse_sigmoid", {"beta": True}),
    ("reverse_sigmoid", {"gamma": 0}),
    ("reverse_sigmoid", {"gamma": -0.1}),
    ("reverse_sigmoid", {"gamma": None}),
    ("reverse_sigmoid", {"betta": 1.0}),
    ("rounding", {"decimals": -1}),
    ("rounding", {"decimals": 1.5}),
    ("rounding", {"decimals": "2"}),
    ("rounding", {"decimals": True}),
    ("rounding", {"decimals": 99}),
    ("rounding", {"decimal": 2}),
    ("none", {"beta": 1.0}),
    ("label_only", {"top_k": 1}),
    ("target_noise", {"scale": -0.5}),
    ("target_noise", {"scale": float("nan")}),
    ("target_noise", {"scale": "1"}),
]


@pytest.mark.parametrize(("name", "params"), BAD_PARAMS, ids=[f"{n}-{p}" for n, p in BAD_PARAMS])
def test_bad_parameters_raise_invalid_parameters(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters) as info:
        build_plugin(DEFENSES, name, params)
    assert name in str(info.value)
    with pytest.raises(InvalidParameters):
        build_chain([PluginSpec(name=name, params=params)])


def test_unknown_parameter_message_lists_accepted_ones() -> None:
    with pytest.raises(InvalidParameters, match=r"'betta'.*beta, gamma"):
        build_plugin(DEFENSES, "reverse_sigmoid", {"betta": 1.0})


def test_unknown_defense_lists_known_names() -> None:
    with pytest.raises(UnknownPlugin) as info:
        build_plugin(DEFENSES, "revers_sigmoid", {})
    message = str(info.value)
    assert "revers_sigmoid" in message
    for name in NAMES:
        assert name in message
    assert sorted(info.value.known) == NAMES
    with pytest.raises(UnknownPlugin):
        build_chain([PluginSpec(name="revers_sigmoid")])
