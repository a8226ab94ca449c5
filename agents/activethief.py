"""ActiveThief (Pal, Gupta, Shukla, Kanade, Shevade, Ganapathy, "ActiveThief: Model Extraction
Using Active Learning and Unannotated Public Data", AAAI 2020): spend the budget on the pool
images an active-learning strategy finds most informative, not on a uniform sample.

The thief queries a random share of its budget (``initial_fraction``) from the pool, then for
``rounds`` rounds: train the substitute on every answer so far, run it over the pool images not
yet queried, pick the next batch with the ``strategy``, and query it. The final substitute is
trained on all answers (with ``best_response_trials``, a fresh one whose recipe and targets the
inner best response picked, :mod:`agents._best_response`). Strategies:

- ``"entropy"`` (uncertainty sampling): the images whose substitute prediction has the highest
  entropy ``−Σ p log p``;
- ``"kcenter"`` (the core-set greedy of Sener & Savarese, ICLR 2018): farthest-first traversal in
  the substitute's softmax-output space — each pick is the candidate whose distance to the nearest
  already-queried or already-picked image is largest, so the batch covers the pool;
- ``"random"``: uniform picks, the control that isolates what selection buys.

The paper retrains from scratch every round. Here each round's substitute continues from the
previous one for ``round_epochs`` over all answers so far, and the final one for ``epochs``: at
the same cost this trains better (with a small first sample, a from-scratch final model at few
epochs can stay stuck predicting one class). ``warm_start=False`` gives the paper's schedule;
fewer ``round_epochs`` make the rounds cheaper but, measured at 1k queries on Fashion-MNIST,
pick worse batches.

The budget left after the initial share is split evenly over the rounds; no round asks for more
than the oracle has left, and the attack never queries a pool image twice (so it stops at the
pool's size). The substitute learns from the oracle's top-1 labels (the paper's setting), or from
its returned rows with ``soft_labels``. A detector's refusal ends the querying; the final
substitute is trained on what was answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents._rounds import ask, training_targets
from agents._thief_recipe import ThiefTraining
from arena.attacker import ATTACKS, Attacker
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import TrainRecipe, predict_probs
from arena.validation import check_bool, check_choice, check_integer, check_number

STRATEGIES = ("entropy", "kcenter", "random")
DISTANCE_CHUNK = 2048
"""candidate rows per ``torch.cdist`` call when computing distances to the queried set"""


@ATTACKS.register("activethief", version=2)
@dataclass(frozen=True)
class ActiveThief(ThiefTraining, Attacker):
    """ActiveThief (Pal et al. 2020): rounds of pool selection by entropy or k-center greedy."""

    strategy: str = "entropy"
    """how each round picks pool images: "entropy", "kcenter" or "random" (the control)"""
    initial_fraction: float = 0.1
    """share of the budget spent on the initial uniform sample, in (0, 1]"""
    rounds: int = 5
    """selection rounds after the initial sample; the rest of the budget is split evenly"""
    round_epochs: int = 20
    """training epochs of each round's substitute, which serves to pick the next batch (the
    final substitute trains on the shared thief recipe, ``epochs``/``min_steps``)"""
    query_batch: int = 256
    """images per oracle call"""
    soft_labels: bool = False
    """train on the oracle's returned rows instead of its top-1 labels"""
    warm_start: bool = True
    """each round's substitute, and the final one, continue from the previous round's weights;
    ``False`` trains a fresh substitute every time, as the paper does"""

    def __post_init__(self) -> None:
        super().__post_init__()  # the base class checks the options every attack shares
        check_choice("strategy", self.strategy, STRATEGIES)
        check_number("initial_fraction", self.initial_fraction, low=0, high=1, low_open=True)
        self.check_training()
        for name in ("rounds", "round_epochs", "query_batch"):
            check_integer(name, getattr(self, name), low=1)
        check_bool("soft_labels", self.soft_labels)
        check_bool("warm_start", self.warm_start)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        pool = knowledge.pool
        budget = min(oracle.remaining, len(pool))
        sizes = round_sizes(budget, self.initial_fraction, self.rounds)
        queried = np.zeros(len(pool), dtype=bool)
        order = torch.from_numpy(np.sort(rng.choice(len(pool), sizes[0], replace=False)))
        answers, stop = ask(oracle, pool[order], self.query_batch)
        asked = order[: len(answers)]
        queried[asked.numpy()] = True
        substitute: nn.Module | None = None
        for size in sizes[1:]:
            if stop:
                break
            candidates = np.flatnonzero(~queried)
            k = min(size, oracle.remaining, len(candidates))
            if k == 0:
                continue
            round_recipe = self.training_recipe(len(asked), epochs=self.round_epochs)
            substitute = self._fit(knowledge, substitute, pool[asked], answers, round_recipe, rng)
            probs = predict_probs(substitute, pool)
            picks = self.select(probs[candidates], probs[asked], k, rng)
            batch = torch.from_numpy(candidates[picks])
            new_answers, stop = ask(oracle, pool[batch], self.query_batch)
            batch = batch[: len(new_answers)]
            queried[batch.numpy()] = True
            asked = torch.cat([asked, batch])
            answers = torch.cat([answers, new_answers])
        if self.best_response_trials > 1:  # searched recipes train fresh, never warm-started
            return self.fit_substitute(
                knowledge, pool[asked], answers, torch_seed(rng), self.targets
            )
        final_recipe = self.training_recipe(len(asked))
        return self._fit(knowledge, substitute, pool[asked], answers, final_recipe, rng)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        """The oracle's top-1 labels, or its renormalised rows with ``soft_labels``."""
        return training_targets(answers, self.soft_labels)

    def _fit(
        self,
        knowledge: Knowledge,
        previous: nn.Module | None,
        x: torch.Tensor,
        answers: torch.Tensor,
        recipe: TrainRecipe,
        rng: np.random.Generator,
    ) -> nn.Module:
        """The substitute trained on ``x`` and the oracle's ``answers``: ``previous`` trained
        further when warm-starting (and there is one), else a fresh model."""
        seed = torch_seed(rng)
        substitute = previous
        if substitute is None or not self.warm_start:
            substitute = knowledge.make_substitute(seed)
        return knowledge.fit(substitute, x, self.targets(answers), recipe, seed=seed)

    def select(
        self,
        candidates: torch.Tensor,
        queried: torch.Tensor,
        k: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Indices of ``k`` distinct rows of ``candidates`` (substitute softmax outputs of the
        unqueried pool images) to query next; ``queried`` holds those of the queried images."""
        if self.strategy == "entropy":
            return torch.topk(entropy(candidates), k).indices.numpy()
        if self.strategy == "kcenter":
            return k_center_greedy(candidates, queried, k)
        return rng.choice(len(candidates), k, replace=False)


def round_sizes(budget: int, initial_fraction: float, rounds: int) -> list[int]:
    """Queries planned for the initial sample and for each selection round, summing to ``budget``.

    The initial sample gets ``initial_fraction`` of the budget (at least one query when there is
    any budget); the rest is split as evenly as integers allow, the earlier rounds taking the
    remainder.
    """
    initial = min(budget, max(1, round(initial_fraction * budget))) if budget > 0 else 0
    rest = budget - initial
    return [initial] + [rest // rounds + (1 if i < rest % rounds else 0) for i in range(rounds)]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row; zero probabilities contribute zero, never ``log 0``."""
    terms: torch.Tensor = torch.special.entr(probs)
    return terms.sum(dim=1)


def k_center_greedy(candidates: torch.Tensor, centers: torch.Tensor, k: int) -> np.ndarray:
    """Farthest-first traversal: ``k`` candidate indices, each maximising the distance to its
    nearest center (the initial ``centers`` plus the candidates picked before it).

    The distances to the initial centers are computed once, in chunks of
    :data:`DISTANCE_CHUNK` candidates; each pick then updates them with one vectorised distance
    to the picked row.
    """
    nearest = torch.full((len(candidates),), torch.inf)
    for start in range(0, len(candidates), DISTANCE_CHUNK):
        chunk = candidates[start : start + DISTANCE_CHUNK]
        if len(centers):
            nearest[start : start + len(chunk)] = torch.cdist(chunk, centers).min(dim=1).values
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        pick = int(torch.argmax(nearest))
        picks[i] = pick
        distance = torch.cdist(candidates, candidates[pick : pick + 1]).squeeze(1)
        nearest = torch.minimum(nearest, distance)
        nearest[pick] = -1.0  # never picked twice, even if candidates repeat
    return picks
