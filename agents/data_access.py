"""Privileged threat model, not an API adversary: the thief holds the victim's training split.

Dataset inference (Maini, Yaghini and Papernot, ICLR 2021, "Dataset Inference: Ownership
Resolution in Machine Learning") judges ownership verifiers against three adversaries; this is
its *data access* one (A_D): the thief has the victim's own training data, labels included, and
either

- ``mode: scratch``: trains the substitute architecture from scratch on the training split with
  its true labels, with the thieves' shared recipe (:mod:`agents._thief_recipe`); no queries;
- ``mode: distill``: distils the victim through its API on that data: it spends the whole budget
  on training-split images (drawn without replacement, cycled if the budget is larger), and
  trains a fresh substitute on the answers (probabilities, or whatever the defended victim
  returns), as the transfer-set attacks do with their pool. Defenses act on these queries.

Why ``distill`` goes through the oracle: the training split is the privileged knowledge; the
victim's weights are the other threat model (``model_access``). Distilling here therefore means
labelling the victim's own data with the victim's (defended) answers, and it is charged.

The split is granted by the referee only to attacks declaring ``threat_model = "data_access"``
(the match data carries it for those matches only). The record carries ``threat_model:
data_access`` and the leaderboard shows it beside the defense, never as its strongest adversary.
It needs no attacker pool, so a tournament plays it once, under pool ``none``. The paper trains
WideResNets on CIFAR; here the substitute is the match's, trained with the thieves' recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from agents._thief_recipe import ThiefTraining
from agents._transfer import query_random_subset
from arena.attacker import ATTACKS, Attacker, MissingKnowledge
from arena.knowledge import DATA_ACCESS, Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.validation import check_choice, check_integer

MODES = ("scratch", "distill")


def _as_given(targets: torch.Tensor) -> torch.Tensor:
    """Train on the labels or answers as they are."""
    return targets


@ATTACKS.register("data_access")
@dataclass(frozen=True)
class DataAccess(ThiefTraining, Attacker):
    """Privileged threat model: a fresh substitute trained on the victim's own training split.

    With its true labels (``scratch``), or the victim's answers on it (``distill``); not an API
    adversary, never a defense's strongest one."""

    needs_pool: ClassVar[bool] = False
    threat_model: ClassVar[str] = DATA_ACCESS

    mode: Literal["scratch", "distill"] = "scratch"
    """``scratch``: the split's true labels, no queries; ``distill``: the victim's answers on
    the split, the whole budget"""
    query_batch: int = 256
    """images per oracle call (``distill``)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_training()
        check_choice("mode", self.mode, MODES)
        check_integer("query_batch", self.query_batch, low=1)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        split = knowledge.victim_train
        if split is None:
            raise MissingKnowledge(
                "data_access needs the victim's training split: the referee grants it only to "
                "attacks whose threat_model is data_access"
            )
        if self.mode == "scratch":
            x, targets = split.x, split.y
        else:
            x, targets = query_random_subset(oracle, split.x, rng, self.query_batch)
        return self.fit_substitute(knowledge, x, targets, torch_seed(rng), _as_given)
