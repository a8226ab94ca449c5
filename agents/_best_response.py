"""The thief's inner best response: pick its training recipe and target form by a small seeded
search on a held-out part of its own answered queries, then train on all of them.

The thief never sees the victim's test data, and the search spends no queries: the answers it
already holds are split (80/20, seeded) and every candidate is trained on the larger part and
scored by top-1 agreement with the victim's answers on the smaller one, the only signal a thief
has. Candidate 0 is always the attack's own recipe and targets, and the search leaves it only for
a candidate whose held-out edge over it is significant (:func:`pick`): a held-out fifth of 1,000
answers is 200 rows, whose agreement moves by ~2.5 points between equally good recipes, and
picking the luckiest of several made the search a third of a point *weaker* than its own recipe
at 1k queries (measured, ``benchmarks/thief_strength.py``). The others are drawn
without replacement from a small menu (:data:`TARGET_FORMS`, :data:`SHIFTS`,
:data:`EPOCH_SCALES`, :data:`LEARNING_RATES`, and the granted substitute architecture plus
:data:`ARCH_MENU` where they build); candidates that would train identically (e.g. soft and
hard targets on one-hot, label-only answers) are drawn once. The winner is trained on every
answer through :meth:`Knowledge.fit`, last, so the referee records its recipe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.errors import ArenaError
from arena.knowledge import Knowledge
from arena.models import build_model
from arena.training import TrainRecipe, predict_probs

TargetFn = Callable[[torch.Tensor], torch.Tensor]
"""what a substitute learns from the oracle's answers (the attack's own transform)"""
RecipeFn = Callable[[int], TrainRecipe]
"""the attack's recipe for a transfer set of that many rows (auto or explicit epochs)"""

OWN = "own"
"""the attack's own target transform (recorded under its default name, soft or hard)"""
TARGET_FORMS = (OWN, "soft", "hard", "soft T=2", "soft T=4")
"""``soft``: the answer rows renormalised; ``hard``: their top-1 labels; ``soft T=t``: the rows
flattened by a temperature, ``rows ** (1/t)`` renormalised (softmax of log-probabilities / t)"""
SHIFTS = (0, 1, 2)
"""augmentation menu: random translations of up to this many pixels (images only)"""
EPOCH_SCALES = (0.5, 1.0, 2.0)
"""multipliers of the attack's own epoch count (auto or explicit)"""
LEARNING_RATES = (5e-4, 1e-3, 2e-3)
ARCH_MENU = ("lenet5", "mlp")
"""architectures tried besides the granted one, where they build for the input shape"""
HELD_OUT = 0.2
"""share of the answered queries kept out of candidate training to score them"""
SWITCH_LEVEL = 0.05
"""false-switch rate of :func:`pick`: one-sided, paired, Bonferroni-corrected over the
candidates it is compared with"""


@dataclass(frozen=True)
class Candidate:
    """One recipe the search may pick: target form, epoch multiplier, rate, shift, architecture
    (``None`` fields keep the attack's own value)."""

    form: str = OWN
    epoch_scale: float = 1.0
    lr: float | None = None
    shift_pixels: int | None = None
    arch: str | None = None

    def recipe(self, own: TrainRecipe) -> TrainRecipe:
        """The attack's own recipe with this candidate's changes."""
        return replace(
            own,
            epochs=max(1, round(own.epochs * self.epoch_scale)),
            lr=own.lr if self.lr is None else self.lr,
            shift_pixels=own.shift_pixels if self.shift_pixels is None else self.shift_pixels,
        )


@dataclass(frozen=True)
class Outcome:
    """The search's result: candidates in order, their held-out agreements, the winner."""

    candidates: tuple[Candidate, ...]
    agreements: tuple[float, ...]
    chosen: int
    edge_z: float
    """the paired z-score of the best candidate's held-out edge over the attack's own (0 when
    the own recipe scored best)"""


def best_response(
    knowledge: Knowledge,
    x: torch.Tensor,
    answers: torch.Tensor,
    seed: int,
    trials: int,
    targets: TargetFn,
    recipe_for: RecipeFn,
) -> tuple[nn.Module, Outcome]:
    """Search ``trials`` candidates on a held-out split of the answered queries, then fit the
    best on all of them (seeded by ``seed``, as the attack's own fit would be)."""
    rng = np.random.default_rng(seed)
    train, held = split(len(x), rng)
    candidates = draw_candidates(knowledge, answers[train], targets, recipe_for, trials, rng)
    hits = [
        _held_out_hits(knowledge, c, x, answers, train, held, seed, targets, recipe_for)
        for c in candidates
    ]
    chosen, edge_z = pick(hits)
    scores = tuple(float(h.float().mean()) if len(h) else 0.0 for h in hits)
    outcome = Outcome(tuple(candidates), scores, chosen, edge_z)
    model = fit_candidate(
        knowledge, candidates[outcome.chosen], x, answers, seed, targets, recipe_for
    )
    return model, outcome


def split(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train and held-out row indices (at least one of each when ``n >= 2``)."""
    order = torch.from_numpy(rng.permutation(n))
    held = min(n - 1, max(1, round(HELD_OUT * n))) if n >= 2 else 0
    return order[held:], order[:held]


def pick(hits: list[torch.Tensor]) -> tuple[int, float]:
    """The candidate to train, from each candidate's per-row held-out hits (agreement with the
    victim's answers), candidate 0 being the attack's own recipe; and the edge's z-score.

    The best mean agreement wins (a tie goes to the earlier candidate), but over the attack's own
    recipe only when its edge is significant: the rows are shared, so the per-row differences
    are paired, and their mean must exceed the one-sided normal quantile of
    ``SWITCH_LEVEL / (candidates - 1)`` standard errors. Otherwise the own recipe is kept.
    """
    means = [float(h.float().mean()) if len(h) else 0.0 for h in hits]
    best = max(range(len(means)), key=lambda i: (means[i], -i))
    if best == 0:
        return 0, 0.0
    z = paired_z(hits[best], hits[0])
    needed = NormalDist().inv_cdf(1 - SWITCH_LEVEL / (len(hits) - 1))
    return (best if z > needed else 0), z


def paired_z(candidate: torch.Tensor, own: torch.Tensor) -> float:
    """z-score of the mean per-row difference of two hit vectors on the same rows (0 when they
    never differ, infinite when every row differs the same way)."""
    differences = candidate.double() - own.double()
    n = len(differences)
    if n < 2:
        return 0.0
    mean = float(differences.mean())
    spread = float(differences.var(unbiased=True))
    if spread == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / math.sqrt(spread / n)


def draw_candidates(
    knowledge: Knowledge,
    answers: torch.Tensor,
    targets: TargetFn,
    recipe_for: RecipeFn,
    trials: int,
    rng: np.random.Generator,
) -> list[Candidate]:
    """Candidate 0 (the attack's own), then up to ``trials - 1`` others drawn from the menu in a
    seeded order, skipping any that would train exactly as an earlier one."""
    forms = TARGET_FORMS if answers.dim() == 2 else (OWN,)
    shifts = SHIFTS if len(knowledge.input_shape) == 3 else (None,)
    menu = list(
        itertools.product(forms, EPOCH_SCALES, LEARNING_RATES, shifts, substitute_archs(knowledge))
    )
    own_recipe = recipe_for(len(answers))
    keys = _form_classes(forms, answers, targets, knowledge.num_classes)
    chosen = [Candidate()]
    seen = {_identity(Candidate(), keys, own_recipe, knowledge)}
    for i in rng.permutation(len(menu)):
        if len(chosen) >= trials:
            break
        candidate = Candidate(*menu[i])
        identity = _identity(candidate, keys, own_recipe, knowledge)
        if identity not in seen:
            seen.add(identity)
            chosen.append(candidate)
    return chosen


def substitute_archs(knowledge: Knowledge) -> tuple[str, ...]:
    """The granted architecture, then those of :data:`ARCH_MENU` that build for the input."""
    archs = [knowledge.substitute_arch]
    for arch in ARCH_MENU:
        if arch in archs:
            continue
        try:
            build_model(arch, knowledge.input_shape, knowledge.num_classes, seed=0)
        except (ArenaError, ValueError):
            continue
        archs.append(arch)
    return tuple(archs)


def form_targets(form: str, answers: torch.Tensor, targets: TargetFn) -> torch.Tensor:
    """The training targets of ``form`` (see :data:`TARGET_FORMS`) for these answers."""
    if form == OWN:
        return targets(answers)
    if form == "hard":
        return answers.argmax(dim=1)
    temperature = float(form.removeprefix("soft T=")) if form.startswith("soft T=") else 1.0
    rows = answers.clamp_min(0) ** (1 / temperature)
    return rows / rows.sum(dim=1, keepdim=True).clamp_min(1e-12)


def form_name(form: str) -> str | None:
    """How the record names the targets (``None``: the default naming of the attack's own)."""
    return None if form == OWN else form


def fit_candidate(
    knowledge: Knowledge,
    candidate: Candidate,
    x: torch.Tensor,
    answers: torch.Tensor,
    seed: int,
    targets: TargetFn,
    recipe_for: RecipeFn,
) -> nn.Module:
    """A fresh substitute of the candidate's architecture trained on ``x`` with its recipe and
    targets, noted in ``knowledge.fits`` (the list is shared with the architecture's copy)."""
    arch = candidate.arch or knowledge.substitute_arch
    granted = replace(knowledge, substitute_arch=arch)
    model = granted.make_substitute(seed)
    recipe = candidate.recipe(recipe_for(len(x)))
    return granted.fit(
        model,
        x,
        form_targets(candidate.form, answers, targets),
        recipe,
        seed=seed,
        targets_form=form_name(candidate.form),
    )


def _held_out_hits(
    knowledge: Knowledge,
    candidate: Candidate,
    x: torch.Tensor,
    answers: torch.Tensor,
    train: torch.Tensor,
    held: torch.Tensor,
    seed: int,
    targets: TargetFn,
    recipe_for: RecipeFn,
) -> torch.Tensor:
    """Per held-out row, whether a substitute trained with ``candidate`` on the other rows agrees
    with the victim's top-1 answer (empty when nothing is held out)."""
    if len(held) == 0:
        return torch.zeros(0, dtype=torch.bool)
    model = fit_candidate(knowledge, candidate, x[train], answers[train], seed, targets, recipe_for)
    predicted = predict_probs(model, x[held]).argmax(dim=1)
    return predicted == answer_labels(answers[held])


def answer_labels(answers: torch.Tensor) -> torch.Tensor:
    """The top-1 label of each answer row (labels stay as they are)."""
    return answers if answers.dim() == 1 else answers.argmax(dim=1)


def _form_classes(
    forms: tuple[str, ...], answers: torch.Tensor, targets: TargetFn, classes: int
) -> dict[str, int]:
    """Each form mapped to the first form whose targets it matches, compared as float rows
    (one-hot soft rows equal hard labels; renormalised rows equal rows that summed to one)."""
    rows: list[torch.Tensor] = []
    found: dict[str, int] = {}
    for form in forms:
        produced = form_targets(form, answers, targets)
        if produced.dim() == 1:
            produced = F.one_hot(produced.long(), classes)
        produced = produced.to(torch.float32)
        same = [i for i, r in enumerate(rows) if torch.allclose(r, produced, atol=1e-5)]
        found[form] = same[0] if same else len(rows)
        if not same:
            rows.append(produced)
    return found


def _identity(
    candidate: Candidate, keys: dict[str, int], own_recipe: TrainRecipe, knowledge: Knowledge
) -> tuple[object, ...]:
    """What a candidate trains on and how: equal for candidates that would train identically."""
    arch = candidate.arch or knowledge.substitute_arch
    return (keys[candidate.form], candidate.recipe(own_recipe), arch)
