"""MAD and GRAD² compute what their papers say: batched surrogate Jacobians equal the per-sample
reference, MAD moves towards the vertex of largest angular deviation within its budget, GRAD²
solves its linear programme exactly, and both turn the thief's gradient away from the truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from arena.data import Split
from arena.defenses import DEFENSES
from arena.defenses.base import Defense
from arena.defenses.jacobians import (
    per_sample_gram,
    per_sample_gram_func,
    per_sample_gram_loop,
)
from arena.defenses.preparation import PrepareContext
from arena.errors import InvalidParameters
from arena.models import build_model
from arena.registry import build_plugin

C = 10
SHAPE = (1, 12, 12)


def context(arch: str = "lenet5") -> PrepareContext:
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(3))
    return PrepareContext("grad", arch, SHAPE, C, Split(x, torch.zeros(8, dtype=torch.long)))


def queries(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and the answers of a fixed "victim" for them (peaked, but not one-hot)."""
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))
    victim = build_model("lenet5", SHAPE, C, seed=99)
    with torch.no_grad():
        probs = torch.softmax(victim(x) * 20, dim=1)
    return x, probs


def prepared(name: str, **params: Any) -> Defense:
    defense = build_plugin(DEFENSES, name, params)
    ctx = context()
    defense.prepare(build_model("lenet5", SHAPE, C, seed=99), ctx)
    return defense


def thief_gradients(defense: Defense, x: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``G^T y`` per row with explicit Jacobians of the defense's surrogate (no Gram shortcut)."""
    surrogate = defense.models["surrogate"]
    params = [p.detach().clone().requires_grad_(True) for p in surrogate.parameters()]
    names = [n for n, _ in surrogate.named_parameters()]
    rows = []
    for sample, answer in zip(x, answers, strict=True):
        weights = dict(zip(names, params, strict=True))
        logits = torch.func.functional_call(surrogate, weights, (sample.unsqueeze(0),))
        loss = (answer * torch.log_softmax(logits, dim=1).squeeze(0)).sum()
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).to(torch.float64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


# ---- the Jacobian machinery -------------------------------------------------------------------


class SharedLayer(nn.Module):
    """Applies one linear layer twice: the layer-wise shortcut must notice and fall back."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.square = nn.Linear(144, 144)
        self.head = nn.Linear(144, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.square(torch.tanh(self.square(self.flatten(x))))
        return self.head(hidden)


def unusual_models() -> list[nn.Module]:
    """Layers the layer-wise shortcut does not cover (strided, dilated, grouped, normalised)."""
    torch.manual_seed(5)
    strided = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, dilation=2),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2, bias=False),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.LazyLinear(C),
    )
    strided(torch.zeros(1, *SHAPE))  # materialise the lazy layer
    plain_strided = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1, dilation=2), nn.Flatten(), nn.LazyLinear(C)
    )
    plain_strided(torch.zeros(1, *SHAPE))
    return [strided, plain_strided, SharedLayer()]


@pytest.mark.parametrize("arch", ["lenet5", "mlp", "softmax_regression"])
@pytest.mark.parametrize("method", ["layerwise", "func"])
def test_batched_gram_equals_per_sample_loop(arch: str, method: str) -> None:
    model = build_model(arch, SHAPE, C, seed=1)
    x = torch.rand(11, *SHAPE, generator=torch.Generator().manual_seed(2))
    if method == "layerwise":
        batched = per_sample_gram(model, x, chunk_size=4)  # chunks of 4, 4 and 3
    else:
        batched = per_sample_gram_func(model, x, chunk_size=4)
    reference = per_sample_gram_loop(model, x)
    assert batched.shape == (11, C, C)
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, batched.transpose(1, 2))
    assert (torch.linalg.eigvalsh(batched.double()) > -1e-4).all()  # a Gram matrix is PSD


@pytest.mark.parametrize("index", range(3))
def test_other_layers_get_the_same_gram(index: int) -> None:
    model = unusual_models()[index]
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        per_sample_gram(model, x), per_sample_gram_loop(model, x), rtol=1e-4, atol=1e-5
    )
    assert model.training  # the mode is restored


def test_gram_of_an_empty_batch_is_empty() -> None:
    model = build_model("mlp", SHAPE, C, seed=1)
    assert per_sample_gram(model, torch.empty(0, *SHAPE)).shape == (0, C, C)


# ---- MAD -----------------------------------------------------------------------------------


def test_mad_moves_towards_the_vertex_of_largest_angular_deviation() -> None:
    x, probs = queries(24)
    defense = prepared("mad", epsilon=0.5)
    out = defense.respond(probs, x, None).to(torch.float64)
    vertices = thief_gradients(defense, x.repeat_interleave(C, 0), torch.eye(C).repeat(24, 1))
    truthful = thief_gradients(defense, x, probs)
    cosines = cosine(vertices, truthful.repeat_interleave(C, 0)).reshape(24, C)
    expected = cosines.argmin(dim=1)
    moved = out - probs.to(torch.float64)
    assert (moved.argmax(dim=1) == expected).all()
    # the answer lies on the segment from y to that vertex
    vertex = torch.nn.functional.one_hot(expected, C).to(torch.float64)
    step = moved.abs().sum(dim=1) / (vertex - probs.double()).abs().sum(dim=1)
    torch.testing.assert_close(out, probs.double() + step[:, None] * (vertex - probs.double()))


@pytest.mark.parametrize(
    ("norm", "epsilon"), [("l1", 0.3), ("l1", 1.0), ("l2", 0.2), ("kl", 0.1), ("kl", 1.0)]
)
def test_mad_spends_exactly_its_budget(norm: str, epsilon: float) -> None:
    x, probs = queries(32)
    out = prepared("mad", epsilon=epsilon, norm=norm).respond(probs, x, None)
    y = probs.double()
    answer = out.double()
    if norm == "l1":
        distance = (answer - y).abs().sum(dim=1)
    elif norm == "l2":
        distance = (answer - y).norm(dim=1)
    else:
        distance = (answer * (answer.clamp_min(1e-30) / y).log()).where(answer > 0, 0.0).sum(1)
    reached_vertex = answer.max(dim=1).values > 1 - 1e-5
    assert (distance <= epsilon * (1 + 1e-4) + 1e-6).all()
    # where the vertex was out of reach, the line search stopped on the budget's boundary
    torch.testing.assert_close(
        distance[~reached_vertex],
        torch.full_like(distance[~reached_vertex], epsilon),
        rtol=1e-3,
        atol=1e-5,
    )


def test_mad_turns_the_thief_gradient_further_than_random_noise_of_the_same_size() -> None:
    x, probs = queries(48)
    defense = prepared("mad", epsilon=0.5)
    poisoned = defense.respond(probs, x, None)
    random_vertex = torch.randint(0, C, (48,), generator=torch.Generator().manual_seed(4))
    towards = torch.nn.functional.one_hot(random_vertex, C).float() - probs
    noisy = probs + towards * (0.5 / towards.abs().sum(dim=1, keepdim=True)).clamp(max=1.0)
    truthful = thief_gradients(defense, x, probs)
    mad_cos = cosine(thief_gradients(defense, x, poisoned), truthful)
    noise_cos = cosine(thief_gradients(defense, x, noisy), truthful)
    assert mad_cos.mean() < noise_cos.mean() - 0.03
    # the vertex is chosen for its own angle, not the blend's, so a few rows may lose
    assert (mad_cos <= noise_cos + 1e-6).float().mean() > 0.8


def test_mad_argmax_preserving_keeps_every_label_and_still_perturbs() -> None:
    x, probs = queries(64)
    free = prepared("mad", epsilon=1.0).respond(probs, x, None)
    kept = prepared("mad", epsilon=1.0, argmax_preserving=True).respond(probs, x, None)
    assert (kept.argmax(dim=1) == probs.argmax(dim=1)).all()
    assert (free.argmax(dim=1) != probs.argmax(dim=1)).any()  # without the constraint it flips
    assert (kept - probs).abs().sum(dim=1).mean() > 0.05


def test_victim_surrogate_is_a_frozen_copy_of_the_victim() -> None:
    victim = build_model("lenet5", SHAPE, C, seed=99)
    defense = build_plugin(DEFENSES, "mad", {"surrogate": "victim"})
    served = defense.prepare(victim, context())
    assert served is victim
    surrogate = defense.models["surrogate"]
    assert surrogate is not victim
    for mine, theirs in zip(surrogate.parameters(), victim.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert all(p.requires_grad for p in victim.parameters())  # the victim itself is untouched


def test_random_surrogate_follows_its_architecture_and_seed() -> None:
    one = prepared("mad", surrogate_arch="mlp", seed=3).models["surrogate"]
    two = prepared("mad", surrogate_arch="mlp", seed=3).models["surrogate"]
    other = prepared("mad", surrogate_arch="mlp", seed=4).models["surrogate"]
    first = next(one.parameters())
    assert torch.equal(first, next(two.parameters()))
    assert not torch.equal(first, next(other.parameters()))
    assert isinstance(one[0], torch.nn.Flatten)  # the mlp, not the victim's lenet5


# ---- GRAD² ---------------------------------------------------------------------------------


def test_gradient_redirection_solves_its_linear_programme() -> None:
    """Against scipy's LP solver: maximise -y~^T K y s.t. y~ in the simplex, ||y~ - y||_1 <= eps."""
    x, probs = queries(12)
    epsilon = 0.6
    defense = prepared("gradient_redirection", epsilon=epsilon)
    out = defense.respond(probs, x, None).double()
    gram = defense.gram(x)
    for row in range(12):
        y = probs[row].double().numpy()
        score = -(gram[row] @ probs[row].double()).numpy()
        # variables: y~ (C) and slacks t >= |y~ - y| (C)
        objective = np.concatenate([-score, np.zeros(C)])
        eye = np.eye(C)
        a_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros((1, C)), np.ones((1, C))]])
        b_ub = np.concatenate([y, -y, [epsilon]])
        a_eq = np.concatenate([np.ones(C), np.zeros(C)])[None, :]
        solved = linprog(objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=(0, None))
        assert solved.success
        best = -solved.fun
        assert float(score @ out[row].numpy()) == pytest.approx(best, rel=1e-5, abs=1e-7)
    assert ((out - probs.double()).abs().sum(dim=1) <= epsilon + 1e-5).all()


def test_gradient_redirection_points_the_thief_gradient_backwards() -> None:
    x, probs = queries(32)
    defense = prepared("gradient_redirection", epsilon=1.0)
    truthful = thief_gradients(defense, x, probs)
    redirected = thief_gradients(defense, x, defense.respond(probs, x, None))
    alignment = (redirected * truthful).sum(dim=1) / truthful.norm(dim=1) ** 2
    assert (alignment < 1).all()
    assert alignment.mean() < 0.5


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mad", {"epsilon": 0}),
        ("mad", {"epsilon": float("nan")}),
        ("mad", {"norm": "linf"}),
        ("mad", {"argmax_preserving": "yes"}),
        ("mad", {"surrogate": "oracle"}),
        ("gradient_redirection", {"surrogate_arch": "resnet999"}),
        ("gradient_redirection", {"seed": -1}),
        ("gradient_redirection", {"epsilon": "big"}),
    ],
)
def test_bad_parameters_are_rejected(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters):
        build_plugin(DEFENSES, name, params)
