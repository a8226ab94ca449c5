"""The Defense contract (DESIGN §3): a frozen dataclass of hyperparameters with optional hooks.

Output-side defenses implement :meth:`Defense.respond`, vectorised over the batch. Defenses that
train or build models (a new victim, a surrogate, a misinformation model) implement
:meth:`Defense.prepare`, which the service calls once before serving; auxiliary models live in the
defense's ``models`` dict, never in its hyperparameters. Detectors keep per-attacker state from
:meth:`Defense.new_state` and may refuse a flagged caller through :meth:`Defense.refusal`.
Tunable hyperparameters are declared in ``search_space`` as plain data (Optuna reads it in the
orchestration layer; defenses never import Optuna).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena.defenses.preparation import PrepareContext
from arena.metrics import share
from arena.targets import Targets
from arena.training import predict_probs
from arena.zoo import ZooProfile


@dataclass(frozen=True)
class FloatRange:
    """A continuous hyperparameter range for tuning."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter range for tuning."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter for tuning."""

    options: tuple[Any, ...]


ParamSpace = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Judgement:
    """A verifier's verdict on one suspect model. ``score`` and ``threshold`` are on the
    verifier's own scale, larger meaning "more likely copied"; ``keys`` is what the verification
    spent: the keys or samples it checked the suspect on."""

    score: float
    threshold: float
    keys: int
    verified: bool
    p_value: float | None = None
    """for verifiers that run a hypothesis test: its p-value (``score`` is then ``1 - p``)"""


class OwnershipEvidence:
    """Base: what a verifier keeps to judge a suspect model after a theft, built from a caller's
    state (serving-side watermarks) or by :meth:`Defense.prepare` (fingerprints, training-time
    watermarks). It travels from the service to the referee, so it must pickle."""

    def judge(self, suspect: nn.Module) -> Judgement:
        raise NotImplementedError

    def merged(self, others: list[OwnershipEvidence]) -> OwnershipEvidence:
        """One piece of evidence from this one and the same verifier's evidence for the thief's
        other identities. Evidence that does not depend on the caller returns itself."""
        return self


@dataclass(frozen=True)
class OwnershipKeys(OwnershipEvidence):
    """Key-agreement evidence: inputs and the labels a model copied from this victim is expected
    to give on them. A suspect whose top-1 agreement with ``y`` on ``x`` reaches ``threshold`` is
    claimed stolen (``x``: ``[N, *input_shape]`` float32; ``y``: ``[N]`` int64)."""

    x: torch.Tensor
    y: torch.Tensor
    threshold: float

    def judge(self, suspect: nn.Module) -> Judgement:
        score = key_agreement(suspect, self.x, self.y)
        count = int(self.y.numel())
        return Judgement(score, self.threshold, count, score >= self.threshold)

    def merged(self, others: list[OwnershipEvidence]) -> OwnershipEvidence:
        """The keys of every identity, concatenated (a serving-side watermark marks each
        identity's own queries)."""
        found = [self, *(o for o in others if isinstance(o, OwnershipKeys))]
        x = torch.cat([k.x for k in found])
        y = torch.cat([k.y for k in found])
        return OwnershipKeys(x, y, self.threshold)


def key_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of the keys on which ``model``'s top-1 label is the key's label. A key on which the
    model's output is not finite (NaN, infinity) counts as a disagreement: the argmax of a NaN
    row is arbitrary, and would otherwise agree with some keys by chance."""
    if not int(y.numel()):
        return 0.0
    with torch.no_grad():
        probs = predict_probs(model, x)
    return share((probs.argmax(dim=1) == y) & torch.isfinite(probs).all(dim=1))


@dataclass(frozen=True)
class Defense:
    """Base class: every hook defaults to "change nothing"."""

    preserves_argmax: ClassVar[bool] = False
    """True when the defended argmax always equals the undefended one (utility is unchanged)."""
    stateful: ClassVar[bool] = False
    """True when ``respond`` reads per-attacker state from ``new_state``."""
    detector: ClassVar[bool] = False
    """True for thief detectors (``detected_after``): matches then also measure a benign
    caller's false positives."""
    needs_training: ClassVar[bool] = False
    """True when ``prepare`` changes the victim's weights (training-time defense)."""
    builds_models: ClassVar[bool] = False
    """True when ``prepare`` trains auxiliary models but serves the victim unchanged (an encoder,
    fingerprint references, a regressor): built once, ahead of serving, like a training-time
    defense's victim, so services that share them never train them twice at once."""
    answers_labels_only: ClassVar[bool] = False
    """True when the answers are one-hot labels (attackers are told through the output spec)."""
    search_space: ClassVar[dict[str, ParamSpace]] = {}
    """Tunable hyperparameters and their ranges."""
    zoo_only: ClassVar[bool] = False
    """True for serving-level defenses that act on a model zoo's selection (they need a zoo)."""
    requires_work: ClassVar[bool] = False
    """True when callers must solve a proof-of-work puzzle per batch (:meth:`work_bits`)."""

    models: dict[str, nn.Module] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """auxiliary models built by :meth:`prepare` (surrogates, misinformation models)"""

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        """Called once before serving: return the model to serve, filling ``self.models`` with
        whatever ``respond`` needs. Expensive artefacts go through ``context.cached_model``."""
        return model

    def new_state(self) -> Any:
        """Per-attacker state for detectors; ``None`` for stateless defenses."""
        return None

    def refusal(self, state: Any) -> str | None:
        """Why this caller's next batch is refused before the model runs (nothing is charged);
        ``None`` to answer it. Only detectors that block a flagged caller override this."""
        return None

    def detected_after(self, state: Any) -> int | None:
        """Queries this caller had sent when a detector flagged it; ``None`` if never flagged."""
        return None

    def work_bits(self, state: Any, batch: int) -> int:
        """Proof of work: leading zero bits per query the caller must find before its next batch
        of ``batch`` queries is answered (:mod:`arena.work`); only ``requires_work`` defenses
        override it."""
        return 0

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        """Output hook: map the ``[B, C]`` probabilities the model gave for ``x`` to answers."""
        return probs

    def perturb_targets(
        self, targets: Targets, profile: ZooProfile, rng: np.random.Generator
    ) -> Targets:
        """Model zoos: the targets the zoo selects a member for, given those the caller stated
        (``rng`` is the caller's own stream). Only serving-level defenses override this."""
        return targets

    def ownership_keys(self, state: Any) -> OwnershipEvidence | None:
        """Ownership verification: the evidence a suspect is judged on after a theft, from this
        caller's ``state`` (serving-side watermarks) or from what ``prepare`` built (training-time
        watermarks, fingerprints, dataset inference); ``None`` for defenses that verify nothing.
        Most verifiers return :class:`OwnershipKeys` (key agreement against a threshold); others
        subclass :class:`OwnershipEvidence` with their own test."""
        return None

    def check_task(self, num_classes: int) -> None:
        """Raise ValueError when these hyperparameters cannot serve a ``num_classes`` task (say
        top-k with k above C); called at config load, where the dataset is known."""

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict (for labels, hashing and tracking)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


def renormalise(rows: torch.Tensor) -> torch.Tensor:
    """Clip negatives and rescale rows to sum to one; an all-zero row becomes uniform."""
    rows = rows.clamp_min(0.0)
    total = rows.sum(dim=1, keepdim=True)
    uniform = torch.full_like(rows, 1.0 / rows.shape[1])
    return torch.where(total > 0, rows / total.clamp_min(1e-30), uniform)


def one_hot_argmax(probs: torch.Tensor) -> torch.Tensor:
    """One-hot rows at each row's argmax."""
    return torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)


def project_to_simplex(rows: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based, vectorised).

    Unlike :func:`renormalise`, it moves mass additively, so small additive noise stays small.
    """
    sorted_rows, _ = rows.sort(dim=1, descending=True)
    cumulative = sorted_rows.cumsum(dim=1) - 1.0
    ranks = torch.arange(1, rows.shape[1] + 1, dtype=rows.dtype, device=rows.device)
    positive = sorted_rows - cumulative / ranks > 0
    count = positive.sum(dim=1, keepdim=True).clamp_min(1)
    theta = cumulative.gather(1, count - 1) / count.to(rows.dtype)
    return renormalise((rows - theta).clamp_min(0.0))
