"""Retraining extraction (Tramèr et al., "Stealing Machine Learning Models via Prediction APIs",
USENIX Security 2016): for models without a closed-form attack, such as an MLP.

The thief needs no data: it queries inputs drawn uniformly from the public input range and fits
the substitute to the returned probability rows by cross-entropy (on labels when the API is
label-only, whose rows are one-hot). Two query strategies:

* ``uniform`` — the whole budget on uniform random inputs, then one training run (the paper's
  retraining with uniform queries).
* ``line_search`` — the paper's adaptive retraining: a first share of the budget on uniform
  inputs, then rounds of (train the substitute; find points near its decision boundaries; query
  them). A boundary point comes from a line search (bisection) between two inputs the current
  substitute labels differently, so the victim is asked where the substitute is least sure. The
  search runs on the substitute and costs no queries (the paper's line search probes the victim
  itself; here every query goes to the points it finds). Pair ends are drawn so that every
  predicted label is equally likely, or the largest class's boundary would take every query.

Points on a straight segment between two uniform inputs are averages of them: their coordinates
crowd towards the middle of the box (a standard deviation of ~0.20 instead of ~0.29 on [0, 1]),
which on digit images costs more fidelity than the boundary gains. ``path="crossover"`` searches
along a path that switches coordinates one at a time from one end to the other instead, which
keeps the spread of uniform inputs; it beat ``uniform`` at equal budget on the digits tests.

Against a softmax-regression victim :mod:`agents.equation_solving` needs far fewer queries.
Uniform noise is far from natural images: a victim may label nearly all of it as one class
(the Fashion-MNIST victims do), and then the thief learns little about the images it will be
scored on. It still runs, degraded, against any victim and any API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from agents.equation_solving import uniform_inputs
from arena.attacker import ATTACKS, Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import TrainRecipe, model_device
from arena.validation import check_choice, check_integer, check_number

STRATEGIES = ("uniform", "line_search")
PATHS = ("straight", "crossover")


@ATTACKS.register("retraining")
@dataclass(frozen=True)
class Retraining(Attacker):
    """Tramèr et al. retraining: fits the substitute to answers on uniform or line-search inputs."""

    needs_pool = False
    victim_kind = "mlp"

    strategy: Literal["uniform", "line_search"] = "uniform"
    """``uniform``: all queries uniform random; ``line_search``: adaptive rounds of queries near
    the current substitute's decision boundaries"""
    epochs: int = 50
    """training epochs of the final substitute over all answered queries"""
    lr: float = 3e-3
    """Adam learning rate"""
    batch_size: int = 64
    """substitute training mini-batch"""
    spread: float = 1.0
    """uniform queries (and line-search endpoints) are drawn from
    ``[low, low + spread·(high - low)]``: 1 is the whole input box (the paper)"""
    query_batch: int = 256
    """inputs per oracle call (also capped by the service's ``max_batch``)"""
    initial_fraction: float = 0.25
    """line_search: share of the budget spent on the first, uniform batch"""
    rounds: int = 4
    """line_search: adaptive rounds after the first batch, sharing the rest of the budget"""
    round_epochs: int = 10
    """line_search: epochs the running substitute is trained on all answers so far before each
    adaptive round (it is kept from round to round; the final substitute starts afresh)"""
    path: Literal["straight", "crossover"] = "straight"
    """line_search: the path searched between two inputs. ``straight``: the segment (the paper);
    ``crossover``: each coordinate switches from one end to the other at its own random point, so
    the points found keep the per-coordinate spread of uniform inputs instead of shrinking
    towards the box's centre"""
    search_steps: int = 10
    """line_search: bisection steps per boundary point (each halves its distance to the boundary)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("path", self.path, PATHS)
        integers = ("epochs", "batch_size", "query_batch", "rounds", "round_epochs", "search_steps")
        for name in integers:
            check_integer(name, getattr(self, name), low=1)
        check_number("lr", self.lr, low=0, high=10, low_open=True, high_open=True)
        check_number("spread", self.spread, low=0, high=1, low_open=True)
        check_number("initial_fraction", self.initial_fraction, low=0, high=1, low_open=True)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        n = oracle.remaining
        if self.strategy == "uniform":
            sizes = [n]
        else:
            first = min(n, max(1, round(self.initial_fraction * n)))
            sizes = [first, *split_evenly(n - first, self.rounds)]
        queries: list[torch.Tensor] = []
        answers: list[torch.Tensor] = []
        current = knowledge.make_substitute(torch_seed(rng))
        for size in sizes:
            if size == 0:
                continue
            if not queries:
                batch = uniform_inputs(rng, size, oracle.input_spec, self.spread)
            else:
                seen = torch.cat(queries)
                current = self._fit(
                    knowledge, current, seen, torch.cat(answers), self.round_epochs, rng
                )
                fresh = uniform_inputs(rng, size, oracle.input_spec, self.spread)
                batch = boundary_points(current, seen, fresh, self.search_steps, rng, self.path)
            answered = oracle.query_all(batch, self.query_batch, until_refused=True)
            queries.append(batch[: len(answered)])
            answers.append(answered)
            if len(answered) < len(batch):
                break  # a detector refused us: keep what was answered
        x = torch.cat(queries) if queries else torch.empty(0, *oracle.input_spec.shape)
        y = torch.cat(answers) if answers else torch.empty(0, oracle.num_classes)
        final = knowledge.make_substitute(torch_seed(rng))
        return self._fit(knowledge, final, x, y, self.epochs, rng)

    def _fit(
        self,
        knowledge: Knowledge,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int,
        rng: np.random.Generator,
    ) -> nn.Module:
        """Train ``model`` on the answers so far (cross-entropy against the returned rows)."""
        recipe = TrainRecipe(epochs=epochs, lr=self.lr, batch_size=self.batch_size)
        return knowledge.fit(model, x, y, recipe, seed=torch_seed(rng))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers differing by at most one, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@torch.no_grad()
def boundary_points(
    model: nn.Module,
    seen: torch.Tensor,
    fresh: torch.Tensor,
    steps: int,
    rng: np.random.Generator,
    path: str = "straight",
) -> torch.Tensor:
    """``len(fresh)`` points near ``model``'s decision boundaries, by bisection along the path
    between pairs of inputs it labels differently.

    Pair endpoints come from the inputs already queried (``seen``) and the ``fresh`` uniform
    inputs, each end drawn so that every predicted label is equally likely (the boundaries of
    rare classes get queried too). If fewer differing pairs turn up than points are needed (a
    model that labels nearly everything alike), fresh inputs fill the gap.
    """
    model.eval()
    n = len(fresh)
    candidates = torch.cat([seen, fresh])
    labels = _predict(model, candidates)
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1).double()
    weights = (1.0 / counts[labels]).numpy()
    weights /= weights.sum()
    first = torch.from_numpy(rng.choice(len(candidates), size=4 * n, p=weights))
    second = torch.from_numpy(rng.choice(len(candidates), size=4 * n, p=weights))
    differ = labels[first] != labels[second]
    first, second = first[differ][:n], second[differ][:n]
    start, end = candidates[first], candidates[second]
    start_label = labels[first]
    if path == "crossover":  # each coordinate switches from start to end at its own time
        switch = torch.from_numpy(rng.random(start.shape, dtype=np.float32))
    broadcast = (-1, *([1] * (start.dim() - 1)))

    def along(t: torch.Tensor) -> torch.Tensor:
        if path == "crossover":
            return torch.where(switch < t.view(broadcast), end, start)
        return start + t.view(broadcast) * (end - start)

    low_t, high_t = torch.zeros(len(start)), torch.ones(len(start))
    for _ in range(steps):
        middle = (low_t + high_t) / 2
        same = _predict(model, along(middle)) == start_label
        low_t = torch.where(same, middle, low_t)
        high_t = torch.where(same, high_t, middle)
    points = along((low_t + high_t) / 2)
    missing = n - len(points)
    if missing:
        points = torch.cat([points, fresh[:missing]])
    return points.clamp(float(candidates.min()), float(candidates.max())).contiguous()


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Top-1 labels of ``x`` computed on the model's device, returned on the CPU."""
    device = model_device(model)
    outputs = [
        model(x[i : i + batch].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, dtype=torch.long)
