"""The attacker-agent contract (DESIGN §3): hyperparameters only; the oracle comes at call time.

The contract and the :data:`ATTACKS` registry live in the arena so the referee can build attackers
by name; the attacks themselves live in the ``agents`` package and register when it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from torch import nn

from arena.errors import ArenaError
from arena.knowledge import API, Knowledge
from arena.oracle import Oracle
from arena.oracle_adapters import ArgmaxOracle, ReverseSigmoidInversionOracle, SmoothingOracle
from arena.registry import OPTION, Registry
from arena.seeds import torch_seed
from arena.validation import check_bool, check_integer, check_number

ANSWER_FORMS = ("soft", "top_k", "label_only")
"""what a victim may answer: probabilities, the k largest of them, or a one-hot label"""


class MissingKnowledge(ArenaError):
    """The threat model does not grant what this attack needs (e.g. a query pool)."""


def _option(default: Any) -> Any:
    """A defense-aware option every attack has; left out of match keys while at its default."""
    return field(default=default, metadata={OPTION: True})


@dataclass(frozen=True)
class Attacker:
    """Base class. ``steal`` checks the threat model, then runs the attack body ``_steal``.

    The fields here are the defense-aware options of DESIGN §3 that combine with any attack.
    Subclasses that validate their own fields call ``super().__post_init__()``.
    """

    needs_pool: ClassVar[bool] = True
    """True when the attack samples its queries from ``knowledge.pool``."""
    victim_kind: ClassVar[str | None] = None
    """The victim family the attack is built for (``"softmax_regression"``, ``"decision_tree"``);
    ``None``: any classifier. Against another kind it still runs, but need not learn much."""
    upper_bound: ClassVar[bool] = False
    """True for a reference point that is not a real threat model (e.g. training on the pool's
    true labels): reported, but never counted as a defense's strongest adversary."""
    threat_model: ClassVar[str] = API
    """What the attacker holds besides the oracle, of :data:`arena.knowledge.THREAT_MODELS`:
    ``api`` for every real API adversary; ``model_access`` (a copy of the served victim) and
    ``data_access`` (the victim's training split) are privileged threat models, granted those
    fields by the referee, reported with their label, never counted as a defense's strongest
    API adversary (:mod:`arena.strongest`)."""
    answer_forms: ClassVar[tuple[str, ...]] = ANSWER_FORMS
    """The answer forms the attack can learn from, of :data:`ANSWER_FORMS` (full probabilities,
    the k largest, the label only); ``soft`` is never left out. ``arena check`` plays the attack
    against each one declared and skips the others."""

    argmax_labels: bool = _option(False)
    """top-1 countermeasure: keep only the argmax of every answer (defeats perturbations that
    keep the label)"""
    smoothing_copies: int = _option(1)
    """multi-query smoothing: send each query as this many noisy copies (each charged) and
    average the answers; 1 = off"""
    smoothing_noise: float = _option(0.05)
    """Gaussian pixel noise (std, in input units) of the extra smoothing copies"""
    invert_reverse_sigmoid: bool = _option(False)
    """undo a reverse-sigmoid perturbation (Lee et al. 2019) with ``beta, gamma`` fitted from
    the answers, and learn from the recovered clean rows (no extra queries)"""
    identities: int = _option(1)
    """identities (accounts) the thief spreads its budget over, each with its own ledger and
    detector state; the match budget is split evenly between them"""

    def __post_init__(self) -> None:
        check_integer("smoothing_copies", self.smoothing_copies, low=1, high=64)
        check_integer("identities", self.identities, low=1, high=64)
        check_number("smoothing_noise", self.smoothing_noise, low=0, high=1)
        check_bool("argmax_labels", self.argmax_labels)
        check_bool("invert_reverse_sigmoid", self.invert_reverse_sigmoid)

    def steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        """Spend (some of) the oracle's budget and return a substitute model in eval mode."""
        if self.needs_pool and knowledge.pool is None:
            name = type(self).__name__
            raise MissingKnowledge(f"{name} needs a query pool; the threat model grants none")
        model = self._steal(self.attacker_view(oracle, rng), knowledge, rng)
        return model.eval()

    def attacker_view(self, oracle: Oracle, rng: np.random.Generator) -> Oracle:
        """The oracle as the attack body sees it once the countermeasure options are applied."""
        if self.smoothing_copies > 1:
            seed = torch_seed(rng)
            oracle = SmoothingOracle(oracle, self.smoothing_copies, self.smoothing_noise, seed)
        if self.invert_reverse_sigmoid:
            oracle = ReverseSigmoidInversionOracle(oracle)
        if self.argmax_labels:
            oracle = ArgmaxOracle(oracle)
        return oracle

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        raise NotImplementedError


ATTACKS: Registry[type[Attacker]] = Registry("attack")
"""Filled by importing ``agents``."""
