"""What a threat model grants the attacker besides the oracle (DESIGN §1).

An API thief gets a query pool at most. The privileged threat models of dataset inference (Maini
et al. 2021, "Dataset Inference: Ownership Resolution in Machine Learning": *model access* and
*data access* beside query access) grant more: a copy of the served victim, or the victim's own
training split. An attack declares which one it plays in
``Attacker.threat_model``; the referee grants the privileged fields to that attack only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from arena.data import Split
from arena.models import build_model
from arena.normalization import Normalization, normalized
from arena.training import LossFn, TrainRecipe, train_classifier

API = "api"
"""the thief reaches the victim only through the metered oracle (every real API adversary)"""
MODEL_ACCESS = "model_access"
"""the thief holds a copy of the victim's weights as served (after training-time defenses)"""
DATA_ACCESS = "data_access"
"""the thief holds the victim's own training split, with its labels"""
THREAT_MODELS = (API, MODEL_ACCESS, DATA_ACCESS)
"""what an attack may declare as its ``threat_model``; only ``api`` ones can be a defense's
strongest adversary (:mod:`arena.strongest`), the others are privileged reference points"""


@dataclass(frozen=True)
class FitRecord:
    """One substitute fit a thief asked for through :meth:`Knowledge.fit`: what it trained on
    and how. The last one is the thief's final substitute: the referee records its recipe and
    retrains its transfer set with the fixed reference recipe (the second track)."""

    x: torch.Tensor
    targets: torch.Tensor
    recipe: TrainRecipe
    arch: str
    """the substitute architecture the model was built as (``Knowledge.substitute_arch``)"""
    targets_form: str
    """what the targets are: ``soft`` (probability rows) or ``hard`` (labels) unless the thief
    names its own (e.g. ``soft T=2``)"""
    own_loss: bool = False
    """trained with the thief's own loss rather than the cross-entropy (e.g. DFME's L1 on
    logits): the reference recipe cannot retrain it"""

    def describe(self) -> dict[str, object]:
        """The recipe as the match record keeps it (JSON-ready)."""
        return {"arch": self.arch, "targets": self.targets_form, **self.recipe.describe()}


@dataclass(frozen=True)
class Knowledge:
    """The attacker's side information: never the victim, its weights, its data or test labels,
    except that a privileged threat model (:data:`MODEL_ACCESS`, :data:`DATA_ACCESS`) gets the
    victim's served weights or its training split.

    It also says where the thief computes (``device``, ``mixed_precision``): not knowledge in the
    threat-model sense, but the one object every thief already receives, so the device reaches
    every substitute through :meth:`make_substitute` and :meth:`fit`."""

    pool: torch.Tensor | None
    """unlabeled query pool ``[N, *input_shape]``; ``None`` for data-free attacks"""
    pool_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    substitute_arch: str
    pool_labels: torch.Tensor | None = None
    """the pool's true labels: granted only to the ``upper_bound`` baseline, never to a thief"""
    device: str = "cpu"
    """where substitutes live and train (:func:`arena.devices.choose_device` picked it); the
    pool, the queries and the oracle's answers stay on the CPU, the oracle's wire format"""
    mixed_precision: bool = False
    """substitute training under autocast (:func:`arena.training.train_classifier`)"""
    normalization: Normalization | None = None
    """the victim dataset's declared normalisation (public, like the input shape): substitutes
    put it in front of their network, as the victim does, so both take ``[0, 1]`` images"""
    victim_copy: nn.Module | None = field(default=None, compare=False, repr=False)
    """a CPU copy of the victim as served: granted only to a ``model_access`` threat model"""
    victim_train: Split | None = field(default=None, compare=False, repr=False)
    """the victim's training split with its labels: granted only to a ``data_access`` threat
    model"""
    fits: list[FitRecord] = field(default_factory=list, compare=False, repr=False)
    """every :meth:`fit` so far, in order (the referee reads the last one)"""

    def make_substitute(self, seed: int) -> nn.Module:
        """A fresh, untrained model of the granted substitute architecture, seeded, on the
        thief's device (built on the CPU first, so its initial weights are the same anywhere)."""
        network = build_model(self.substitute_arch, self.input_shape, self.num_classes, seed=seed)
        return normalized(network, self.normalization).to(self.device)

    def fit(
        self,
        model: nn.Module,
        x: torch.Tensor,
        targets: torch.Tensor,
        recipe: TrainRecipe,
        seed: int,
        loss_fn: LossFn | None = None,
        targets_form: str | None = None,
    ) -> nn.Module:
        """:func:`~arena.training.train_classifier` on the thief's device and precision, noted
        in :attr:`fits` (``targets_form``: how the record names the targets; by default
        ``soft`` for probability rows, ``hard`` for labels)."""
        form = targets_form or ("soft" if targets.dim() == 2 else "hard")
        record = FitRecord(x, targets, recipe, self.substitute_arch, form, loss_fn is not None)
        self.fits.append(record)
        return train_classifier(
            model,
            x,
            targets,
            recipe,
            seed=seed,
            device=self.device,
            loss_fn=loss_fn,
            mixed_precision=self.mixed_precision,
        )
