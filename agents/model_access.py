"""Privileged threat model, not an API adversary: the thief holds a copy of the victim's weights.

Dataset inference (Maini, Yaghini and Papernot, ICLR 2021, "Dataset Inference: Ownership
Resolution in Machine Learning") judges ownership verifiers against three adversaries; this is
its *model access* one (A_M): the thief has the victim model itself, as served (after any
training-time defense, e.g. the adversarially watermarked model), and obfuscates it so the
owner's evidence no longer holds:

- ``obfuscation: fine_tune``: the copy trained on ``images`` pool images labelled by itself,
  for ``epochs`` at a rate ``lr`` that moves the weights (the ``fine_tune`` removal);
- ``obfuscation: distill``: a fresh substitute trained on the copy's probabilities over the
  pool (the ``distill`` removal; the paper distils with softened outputs, here at T=1).

The copy comes from the victim service (``ServiceAPI.served_copy``), granted by the referee only
to attacks declaring ``threat_model = "model_access"``. It spends no queries, so no API defense
can touch it: the record carries ``threat_model: model_access`` and the leaderboard shows it
beside the defense, never as its strongest adversary. The paper fine-tunes and distils a
WideResNet on CIFAR for tens of epochs; the defaults here (5 fine-tuning epochs, 50 distilling
ones, 2000 pool images) are the removals' CPU-sized settings. Departure: no zero-shot variant.
The obfuscation adds no recorded thief fit, so the record's reference track is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from torch import nn

from arena.attacker import ATTACKS, Attacker, MissingKnowledge
from arena.knowledge import MODEL_ACCESS, Knowledge
from arena.oracle import Oracle
from arena.removal import Distill, FineTune, Removal
from arena.validation import check_choice

OBFUSCATIONS = ("fine_tune", "distill")


@ATTACKS.register("model_access")
@dataclass(frozen=True)
class ModelAccess(Attacker):
    """Privileged threat model: the victim's weights, fine-tuned or distilled on the pool.

    Not an API adversary: it spends no queries and is never a defense's strongest one."""

    threat_model: ClassVar[str] = MODEL_ACCESS

    obfuscation: Literal["fine_tune", "distill"] = "fine_tune"
    """how the copy is disguised: fine-tuned itself, or distilled into a fresh substitute"""
    images: int = 2000
    """pool images the obfuscation trains on (at most the pool)"""
    epochs: int | None = None
    """passes over them; ``None``: the removal's default (5 for fine-tuning, 50 for
    distilling)"""
    lr: float = 1e-3
    """Adam learning rate"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("obfuscation", self.obfuscation, OBFUSCATIONS)
        self.obfuscator()  # the removal checks images, epochs and lr, as it would as a removal

    def obfuscator(self) -> Removal:
        """The removal that disguises the copy, with this attack's settings."""
        kind = FineTune if self.obfuscation == "fine_tune" else Distill
        epochs = {} if self.epochs is None else {"epochs": self.epochs}  # else the removal's
        return kind(images=self.images, lr=self.lr, **epochs)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        if knowledge.victim_copy is None:
            raise MissingKnowledge(
                "model_access needs a copy of the victim's weights: the referee grants it only "
                "to attacks whose threat_model is model_access"
            )
        copy = knowledge.victim_copy.to(knowledge.device)
        return self.obfuscator().apply(copy, knowledge, rng)
