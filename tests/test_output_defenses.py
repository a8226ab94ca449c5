"""The simple output perturbations compute what they claim: top-k, random noise, the confidence
cut-off, and the simplex projection they share."""

from __future__ import annotations

import pytest
import torch

from arena.defenses import DEFENSES
from arena.defenses.base import project_to_simplex
from arena.defenses.random_noise import row_keyed_uniforms
from arena.errors import InvalidParameters
from arena.registry import build_plugin

C = 10


def softmax_rows(n: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, C, generator=generator) * scale, dim=1)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def answer(
    name: str, params: dict[str, object], probs: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    defense = build_plugin(DEFENSES, name, params)
    return defense.respond(probs.clone(), x, defense.new_state())


# ---- simplex projection ----------------------------------------------------------------------


def test_projection_known_cases() -> None:
    rows = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.2, 0.3, 0.5], [-1.0, 0.4, 0.4]])
    expected = torch.tensor([[1 / 3] * 3, [1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
    torch.testing.assert_close(project_to_simplex(rows), expected)


def test_projection_is_the_closest_simplex_point() -> None:
    """No random point of the simplex is closer to the input than its projection."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(50, C, generator=generator)
    projected = project_to_simplex(rows)
    candidates = torch.distributions.Dirichlet(torch.ones(C)).sample((2000,))
    best = torch.cdist(rows, candidates).min(dim=1).values
    assert ((rows - projected).norm(dim=1) <= best + 1e-5).all()


# ---- top-k -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, C])
def test_top_k_keeps_the_k_largest_renormalised(k: int) -> None:
    probs = softmax_rows(64, 2.0, seed=1)
    out = answer("top_k", {"k": k}, probs, images(64, 0))
    assert ((out > 0).sum(dim=1) == k).all()
    top = probs.topk(k, dim=1)
    torch.testing.assert_close(out.gather(1, top.indices), top.values / top.values.sum(1, True))
    assert torch.equal(out.argmax(dim=1), probs.argmax(dim=1))


def test_top_k_cannot_exceed_the_number_of_classes() -> None:
    defense = build_plugin(DEFENSES, "top_k", {"k": C + 1})
    with pytest.raises(ValueError, match=r"1\.\.10"):
        defense.check_task(C)
    build_plugin(DEFENSES, "top_k", {"k": C}).check_task(C)


# ---- random noise ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "dirichlet"])
def test_noise_is_keyed_by_the_query(kind: str) -> None:
    """The same image gets the same answer (averaging repeats gains nothing); other images,
    and other seeds, get other noise."""
    probs = softmax_rows(32, 2.0, seed=2)
    x = images(32, 3)
    params = {"kind": kind, "scale": 0.2}
    first = answer("random_noise", params, probs, x)
    repeated = answer("random_noise", params, probs, x.clone())
    torch.testing.assert_close(first, repeated, atol=0, rtol=0)
    shifted = answer("random_noise", params, probs, images(32, 4))
    assert (first - shifted).abs().sum(dim=1).min() > 0
    reseeded = answer("random_noise", {**params, "seed": 1}, probs, x)
    assert (first - reseeded).abs().sum(dim=1).min() > 0


@pytest.mark.parametrize("kind", ["gaussian", "dirichlet"])
def test_noise_grows_with_scale_and_vanishes_at_zero(kind: str) -> None:
    probs = softmax_rows(256, 1.0, seed=5)
    x = images(256, 6)
    l1 = [
        float(
            (answer("random_noise", {"kind": kind, "scale": s}, probs, x) - probs)
            .abs()
            .sum(1)
            .mean()
        )
        for s in (0.0, 0.02, 0.2, 1.0)
    ]
    assert l1[0] < 1e-6
    assert 0 < l1[1] < l1[2] < l1[3]


def test_gaussian_noise_is_standard_normal() -> None:
    """Before projection the streams are N(0, 1): checked through the hash's uniforms."""
    u = row_keyed_uniforms(images(2000, 7), seed=0, count=20)
    assert u.min() > 0.0 and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.003
    # neighbouring streams of a row are uncorrelated
    assert abs(float(torch.corrcoef(torch.tensor(u[:, :2].T))[0, 1])) < 0.05


# ---- confidence cut-off ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["label", "uniform"])
def test_high_confidence_withholds_only_unsure_rows(mode: str) -> None:
    probs = softmax_rows(200, 3.0, seed=8)
    confident = probs.max(dim=1).values >= 0.8
    assert 10 < int(confident.sum()) < 190  # both kinds of rows are present
    out = answer("high_confidence", {"threshold": 0.8, "mode": mode}, probs, images(200, 9))
    assert torch.equal(out[confident], probs[confident])
    unsure = out[~confident]
    if mode == "label":
        assert torch.equal(unsure.argmax(dim=1), probs[~confident].argmax(dim=1))
        assert torch.equal(unsure.max(dim=1).values, torch.ones(len(unsure)))
    else:
        torch.testing.assert_close(unsure, torch.full_like(unsure, 1 / C))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("top_k", {"k": 0}),
        ("top_k", {"k": 1.5}),
        ("random_noise", {"scale": -0.1}),
        ("random_noise", {"kind": "laplace"}),
        ("random_noise", {"concentration": 0}),
        ("high_confidence", {"threshold": 0}),
        ("high_confidence", {"threshold": 1.2}),
        ("high_confidence", {"mode": "blur"}),
    ],
)
def test_bad_parameters_fail_with_a_clear_message(name: str, params: dict[str, object]) -> None:
    key = next(iter(params))
    with pytest.raises(InvalidParameters, match=key):
        build_plugin(DEFENSES, name, params)
