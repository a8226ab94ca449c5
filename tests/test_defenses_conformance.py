"""Every registered defense honours the Defense contract (DESIGN §3, checked by the conformance kit
``arena.testing``, the checks plug-in authors run); the built-ins compute what their papers say."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pytest
import torch

from arena.defenses import DEFENSES, Defense, FloatRange, IntRange, build_chain
from arena.errors import InvalidParameters, UnknownPlugin
from arena.registry import build_plugin
from arena.specs import PluginSpec
from arena.testing import DefenseConformance
from arena.testing.defenses import prepared, tiny_context
from arena.testing.defenses import respond as kit_respond
from arena.testing.probability_rows import (
    CLASSES,
    expect_probability_rows,
    extreme_probs,
    inputs_for,
    softmax_rows,
)

C = CLASSES
NAMES = DEFENSES.names()


def respond(defense: Defense, probs: torch.Tensor) -> torch.Tensor:
    """The answers of ``defense`` (prepared first if it prepares) to ``probs``."""
    return kit_respond(prepared(defense), probs)


# ---- the contract (arena.testing), over every registered name --------------------------------


@functools.cache
def subject(name: str) -> DefenseConformance:
    """One check per defense, shared by its properties (a training defense prepares once)."""
    return DefenseConformance(name)


CASES = [(name, prop) for name in NAMES for prop in DefenseConformance.PROPERTIES]


@pytest.mark.parametrize(("name", "prop"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_defense_conforms(name: str, prop: str) -> None:
    subject(name).check([prop])


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


def test_chain_of_every_defense_gives_probability_rows() -> None:
    chain = build_chain([PluginSpec(name=n) for n in NAMES])
    context = tiny_context()
    chain.prepare(context.new_model(), context)
    probs = extreme_probs()
    out, seconds, _ = chain.respond(probs, inputs_for(probs), chain.new_states())
    expect_probability_rows(out, len(probs))
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
    assert sorted(info.value.known) == DEFENSES.names()
    with pytest.raises(UnknownPlugin):
        build_chain([PluginSpec(name="revers_sigmoid")])
