"""Fingerprinting by conferrable adversarial examples (Lukas, Zhang and Kerschbaum, "Deep Neural
Network Fingerprinting by Conferrable Adversarial Examples", ICLR 2021, arXiv:1912.00888).

A fingerprint verifies ownership without touching the served model. Its keys are *conferrable*
adversarial examples: inputs near real images on which the victim (the paper's *source*) gives
a new label that models derived from the victim (*surrogates*: distilled, extracted) also give,
while models trained independently for the same task (*references*) do not. A suspect's share
of keys on which it returns the victim's label is the paper's CAEAcc; a stolen model has a high
one, an independent model a low one.

The paper's method (the Conferrable Ensemble Method, CEM), as used here:

- conferrability of an input ``x`` for a label ``t``, per the paper:
  ``conf(x, t) = mean_S S(x)_t * (1 - mean_R R(x)_t)`` over surrogates ``S`` and references
  ``R`` (softmax outputs); high when the surrogates give ``t`` and the references do not.
- each candidate starts at a training image ``x0`` and is moved within an L-infinity ball
  ``eps`` by Adam on the paper's loss with three terms,
  ``alpha * H(1, max_t ME(x)_t) - beta * H(M(x0), M(x)) + gamma * H(M(x), mean_S S(x))``:
  maximise the ensemble's best conferrability (``ME``: the product above, over ensembles
  thinned by dropout on their members at every step; here ``-log`` of the product itself, not
  of a re-normalised one), move the source ``M``'s output away
  from its output on the original image, and keep the source and the surrogates consistent
  (``H``: cross-entropy; ``H(1, p) = -log p``).
- the fingerprint: the candidates whose source label changed, most conferrable (for the
  source's new label) first; their labels are the source's labels on them.

What is built here, in :meth:`ConferrableFingerprint.prepare` (the served model is returned
unchanged, answers are untouched, so serving costs nothing):

1. ``surrogates`` models distilled from the victim (trained on its probabilities on
   ``train_images`` images of the victim's training split), ``references`` models trained on
   the true labels of the same images, and ``calibration_references`` more references kept
   out of the generation, each trained for ``epochs`` with its own seed, architectures taken in
   turn from ``architectures`` (empty: the victim's). Each is cached as its own artefact.
2. ``candidates`` keyed training images (``key_seed``) optimised for ``steps`` Adam steps of
   ``attack_lr`` on the loss above, dropout ``dropout`` on ensemble members.
3. The ``size`` most conferrable candidates whose victim label changed form the fingerprint.
4. The threshold: the highest CAEAcc of the held-out calibration references plus ``margin``
   (at most 1): independent models trained as the defender can train them stay below it, so a
   claim needs agreement beyond what independent training gives. A fixed ``threshold``
   replaces it. The fingerprint and its calibrated threshold are cached together as one
   artefact, so a second tournament loads them without training anything.

Departures from the paper, and why. The paper crafts on CINIC-10 and ImageNet32 with large
ensembles (on the order of twenty surrogates and references, full training runs, thousands of
optimisation steps, eps about 0.025 on CINIC: recalled from the paper, whose appendix could not
be retrieved while this was written; the loss form and the conferrability score are checked
against public reimplementations of it). On this 2-core CPU the defaults are 3 + 3 + 3 models
of 3 epochs on at most 10,000 images, 500 candidates, 100 steps, and a larger
``eps = 0.15`` (grey-scale 28x28 and 8x8 images need a larger budget than natural colour images
for a label change that transfers); the loss weights are ``alpha = 1``, ``beta = gamma = 0.1``
and the member dropout 0.3 (the paper's own values could not be confirmed). The paper chooses
the decision threshold from the CAEAcc of references and surrogates it evaluates; here it is
calibrated on held-out references only (never on the thieves it will judge). The paper's
selection also thresholds conferrability; here the ``size`` best are kept (fewer when fewer
candidates change the source's label).

Measured on digits (the MLP victim; the test's settings: 4 + 4 + 3 models of 20 epochs, 500
candidates, 50 steps, 50 keys; built in about 9 s): threshold 0.58 (held-out references 0.10,
0.48, 0.36); MLP copies trained on the victim's probabilities on the attacker pool agree on
0.60-0.74 of the keys, copies trained on its top-1 labels only on 0.38-0.48 (not claimed:
conferrable examples transfer through soft labels); independent MLPs trained like the victim
0.22-0.52, a softmax regression 0.48, MLPs trained on the pool's true labels 0.50-0.58 (one
reaches the threshold). The separation is thin on digits, where independent models trained on
the same images are near-copies of the victim: read a claim near the threshold with care.

Measured on Fashion-MNIST (the arena's LeNet-5 victim, test accuracy 0.906), the defaults
build in about 6 minutes (with another job sharing the CPU): threshold 0.74 (held-out
references 0.57, 0.37, 0.64); LeNets distilled from the victim's probabilities on 10,000 pool
images (10 epochs, accuracy 0.85) agree on 0.75 and 0.81 of the 100 keys, one trained on its
top-1 labels on 0.84; but independent LeNets trained on 20,000 true-labelled images (8 epochs,
accuracy 0.86-0.88) agree on 0.79-0.89, an MLP on 0.55. So at these defaults the fingerprint
does NOT tell copies from independent LeNets on Fashion-MNIST: its 3-epoch references are
weaker than real independent models, and the keys it keeps are inputs on which only weak
models leave the victim's label. Better-trained ensembles (2 + 2 + 2 models, 8 epochs on 20,000
images, 50 steps; built in 174 s) did not help: copies 0.30-0.45, independent LeNets
0.35-0.71, threshold 0.79; those copies are no closer to the victim than independent models.
What makes it separate there (ensembles as strong as the thieves and references the arena
plays, larger ensembles) is open.

On digits (8x8, 1,000 training images, 8 mini-batches an epoch) give ``epochs`` about 20, or
the ensembles stay under-trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from arena.data import Split
from arena.defenses.adversarial_watermark import weights_digest
from arena.defenses.base import (
    Defense,
    FloatRange,
    IntRange,
    OwnershipKeys,
    ParamSpace,
    key_agreement,
)
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.training import TrainRecipe, predict_probs, train_classifier
from arena.validation import check_integer, check_number

TAG = "conferrable_fingerprint"
CHUNK = 256
"""candidates optimised together (memory stays small on large inputs)"""
TINY = 1e-12
"""floor under probabilities before a logarithm"""
ROLE_SEEDS = {"surrogate": 1000, "reference": 2000, "calibration": 3000}
"""seed offsets of the three ensembles: no two models share a seed"""


class Fingerprint(nn.Module):
    """The fingerprint and its calibrated threshold, as buffers (so they cache like a model).
    ``kept`` of the ``size`` rows are keys (fewer when fewer candidates changed label)."""

    def __init__(self, size: int, input_shape: tuple[int, ...], calibration: int) -> None:
        super().__init__()
        self.register_buffer("x", torch.zeros(size, *input_shape))
        self.register_buffer("y", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("conferrability", torch.zeros(size))
        self.register_buffer("kept", torch.zeros((), dtype=torch.int64))
        self.register_buffer("threshold", torch.ones(()))
        self.register_buffer("calibration_agreement", torch.zeros(calibration))

    def keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        kept = int(self.get_buffer("kept"))
        return self.get_buffer("x")[:kept].clone(), self.get_buffer("y")[:kept].clone()


@DEFENSES.register("conferrable_fingerprint")
@dataclass(frozen=True)
class ConferrableFingerprint(Defense):
    """Fingerprint of conferrable adversarial examples: ownership verified, answers unchanged."""

    builds_models: ClassVar[bool] = True

    surrogates: int = 3
    """models distilled from the victim's probabilities, used to craft the fingerprint"""
    references: int = 3
    """models trained independently on the true labels, used to craft the fingerprint"""
    calibration_references: int = 3
    """independent models kept out of crafting, used only to calibrate the threshold"""
    architectures: tuple[str, ...] = ()
    """architectures the ensembles take in turn; empty: the victim's"""
    epochs: int = 3
    """training epochs of every ensemble model"""
    lr: float = 3e-3
    """Adam learning rate of every ensemble model (the arena's victims' rate)"""
    train_images: int = 10_000
    """training images the ensembles train on (a seeded subset of the victim's split)"""
    seed: int = 0
    """seed of the training subset and of the ensembles' initial weights and batches"""
    candidates: int = 500
    """training images optimised into candidate fingerprints"""
    size: int = 100
    """fingerprint size: the most conferrable candidates kept"""
    eps: float = 0.15
    """L-infinity budget of a fingerprint's perturbation (inputs in [0, 1])"""
    steps: int = 100
    """Adam steps on each candidate"""
    attack_lr: float = 0.01
    """Adam learning rate of the perturbation"""
    alpha: float = 1.0
    """weight of the conferrability term"""
    beta: float = 0.1
    """weight of the term moving the victim's output away from the original image's"""
    gamma: float = 0.1
    """weight of the term keeping the victim and the surrogates consistent"""
    dropout: float = 0.3
    """chance each ensemble member is left out at an optimisation step"""
    key_seed: int = 0
    """the owner's secret: which images become candidates, and the dropout draws"""
    margin: float = 0.1
    """calibrated threshold: highest calibration-reference agreement plus this margin"""
    threshold: float | None = None
    """fixed threshold on the share of keys agreeing with the victim; None: calibrated"""

    preserves_argmax: ClassVar[bool] = True
    search_space: ClassVar[dict[str, ParamSpace]] = {
        "eps": FloatRange(0.05, 0.3),
        "size": IntRange(20, 200),
    }

    def __post_init__(self) -> None:
        for name in ("surrogates", "references", "calibration_references", "epochs", "steps"):
            check_integer(name, getattr(self, name), low=1)
        for name in ("train_images", "candidates", "size"):
            check_integer(name, getattr(self, name), low=1)
        check_integer("seed", self.seed, low=0)
        check_integer("key_seed", self.key_seed, low=0)
        if self.size > self.candidates:
            raise ValueError(f"size ({self.size}) exceeds candidates ({self.candidates})")
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("attack_lr", self.attack_lr, low=0, low_open=True)
        check_number("eps", self.eps, low=0, high=1, low_open=True)  # inputs lie in [0, 1]
        for name in ("alpha", "beta", "gamma"):
            check_number(name, getattr(self, name), low=0)
        check_number("dropout", self.dropout, low=0, high=1, high_open=True)
        check_number("margin", self.margin, low=0, high=1)
        if self.threshold is not None:
            check_number("threshold", self.threshold, low=0, high=1, low_open=True)
        if isinstance(self.architectures, str) or not isinstance(self.architectures, Sequence):
            raise ValueError(f"architectures must be a list of names, got {self.architectures!r}")
        if not all(isinstance(a, str) and a for a in self.architectures):
            raise ValueError("architectures must be non-empty architecture names")
        object.__setattr__(self, "architectures", tuple(self.architectures))  # a config's list

    def check_task(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"a fingerprint's label change needs 2 classes, not {num_classes}")

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        """Build (or load) the fingerprint; the victim is served as it is."""
        params = self.artefact_params(model)
        self.models["fingerprint"] = context.cached_model(
            f"{TAG}-keys",
            params,
            lambda: Fingerprint(self.size, context.input_shape, self.calibration_references),
            lambda store: self.build(store, model, context, params["base"]),
        )
        return model

    def ownership_keys(self, state: Any) -> OwnershipKeys | None:
        store = self.models.get("fingerprint")
        if not isinstance(store, Fingerprint) or int(store.get_buffer("kept")) == 0:
            return None
        x, y = store.keys()
        calibrated = float(store.get_buffer("threshold"))
        return OwnershipKeys(x, y, calibrated if self.threshold is None else self.threshold)

    def artefact_params(self, model: nn.Module) -> dict[str, Any]:
        """Everything that changes the fingerprint or its calibrated threshold."""
        params = self.params()
        params.pop("threshold")  # verification only
        params["architectures"] = list(self.architectures)
        params["base"] = weights_digest(model)
        return params

    def build(
        self, store: nn.Module, victim: nn.Module, context: PrepareContext, base: str
    ) -> None:
        """Train the ensembles, craft and select the fingerprint, calibrate its threshold."""
        subset = self.training_subset(context.train)
        surrogates = self.ensemble("surrogate", self.surrogates, context, subset, victim, base)
        references = self.ensemble("reference", self.references, context, subset)
        held_out = self.ensemble("calibration", self.calibration_references, context, subset)
        rows = candidate_rows(len(context.train), self.candidates, self.key_seed)
        x0 = context.train.x[rows]
        generator = torch.Generator().manual_seed(self.key_seed)
        crafted = torch.cat(
            [
                self.craft(victim, surrogates, references, x0[i : i + CHUNK], generator)
                for i in range(0, len(x0), CHUNK)
            ]
        )
        x, y, score = select(victim, surrogates, references, x0, crafted, self.size)
        agreement = torch.tensor([key_agreement(m, x, y) for m in held_out])
        kept = len(y)
        store.get_buffer("x")[:kept] = x
        store.get_buffer("y")[:kept] = y
        store.get_buffer("conferrability")[:kept] = score
        store.get_buffer("kept").fill_(kept)
        store.get_buffer("calibration_agreement").copy_(agreement)
        store.get_buffer("threshold").fill_(min(1.0, float(agreement.max()) + self.margin))

    def training_subset(self, train: Split) -> Split:
        """At most ``train_images`` training images, a seeded choice (the ensembles' data)."""
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(len(train), generator=generator)[: self.train_images]
        return Split(train.x[rows], train.y[rows])

    def ensemble(
        self,
        role: str,
        count: int,
        context: PrepareContext,
        subset: Split,
        victim: nn.Module | None = None,
        base: str = "",
    ) -> list[nn.Module]:
        """``count`` models of one role, each cached under its own key: surrogates learn the
        victim's probabilities (so their key names the victim's weights), the others the true
        labels."""
        targets = subset.y if victim is None else predict_probs(victim, subset.x)
        recipe = TrainRecipe(epochs=self.epochs, lr=self.lr)
        models = []
        for index in range(count):
            arch = (
                self.architectures[index % len(self.architectures)] if self.architectures else None
            )
            seed = self.seed * 10_000 + ROLE_SEEDS[role] + index
            params = {
                "arch": arch or context.victim_arch,
                "seed": seed,
                "epochs": self.epochs,
                "lr": self.lr,
                "train_images": self.train_images,
                "subset_seed": self.seed,
                **({"base": base} if victim is not None else {}),
            }

            def fit(fresh: nn.Module, seed: int = seed) -> None:
                train_classifier(fresh, subset.x, targets, recipe, seed=seed)

            def make(arch: str | None = arch, seed: int = seed) -> nn.Module:
                return context.new_model(arch=arch, seed=seed)

            model = context.cached_model(f"{TAG}-{role}", params, make, fit)
            models.append(model.requires_grad_(False))
        return models

    def craft(
        self,
        victim: nn.Module,
        surrogates: list[nn.Module],
        references: list[nn.Module],
        x0: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Adam on the perturbations of one chunk of candidates, on the paper's loss, each step
        projected onto the ``eps`` ball and onto [0, 1]. Only the input's gradient is taken."""
        was_training = victim.training
        victim.eval()
        with torch.no_grad():
            original = torch.softmax(victim(x0), dim=1)
        delta = torch.zeros_like(x0, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=self.attack_lr)
        for _ in range(self.steps):
            x = x0 + delta
            surrogate = ensemble_probs(thinned(surrogates, self.dropout, generator), x)
            reference = ensemble_probs(thinned(references, self.dropout, generator), x)
            source = torch.softmax(victim(x), dim=1)
            best = (surrogate * (1 - reference)).max(dim=1).values
            conferrable = -torch.log(best + TINY)
            away = cross_entropy(original, source)
            consistent = cross_entropy(source, surrogate)
            loss = self.alpha * conferrable - self.beta * away + self.gamma * consistent
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta.grad = grad
            optimizer.step()
            with torch.no_grad():
                delta.clamp_(-self.eps, self.eps)
                delta.copy_((x0 + delta).clamp(0.0, 1.0) - x0)
        victim.train(was_training)
        return (x0 + delta).detach()


def candidate_rows(n: int, candidates: int, key_seed: int) -> torch.Tensor:
    """The keyed training images the candidates start from (all of them when fewer)."""
    generator = torch.Generator().manual_seed(key_seed)
    return torch.randperm(n, generator=generator)[:candidates]


def thinned(models: list[nn.Module], dropout: float, generator: torch.Generator) -> list[nn.Module]:
    """The ensemble with each member left out with chance ``dropout`` (one is always kept): the
    paper's dropout on ensemble members, so no single member is relied on."""
    if dropout == 0:
        return models
    keep = torch.rand(len(models), generator=generator) >= dropout
    if not bool(keep.any()):
        keep[int(torch.randint(len(models), (1,), generator=generator))] = True
    return [m for m, k in zip(models, keep.tolist(), strict=True) if k]


def ensemble_probs(models: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The mean softmax output of ``models`` on ``x`` (differentiable in ``x``)."""
    return torch.stack([torch.softmax(m(x), dim=1) for m in models]).mean(dim=0)


def cross_entropy(target: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Per row ``H(target, predicted) = -sum target * log predicted``."""
    return -(target * torch.log(predicted + TINY)).sum(dim=1)


def conferrability(
    surrogates: list[nn.Module], references: list[nn.Module], x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The paper's score of each input for label ``t``: the surrogates' mean probability of
    ``t`` times one minus the references'."""
    with torch.no_grad():
        s = ensemble_probs(surrogates, x).gather(1, t[:, None]).squeeze(1)
        r = ensemble_probs(references, x).gather(1, t[:, None]).squeeze(1)
    return s * (1 - r)


def select(
    victim: nn.Module,
    surrogates: list[nn.Module],
    references: list[nn.Module],
    x0: torch.Tensor,
    crafted: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``size`` most conferrable crafted inputs whose victim label changed: their inputs,
    the victim's labels on them and their scores (ties keep the candidates' order)."""
    before = predict_probs(victim, x0).argmax(dim=1)
    after = predict_probs(victim, crafted).argmax(dim=1)
    score = conferrability(surrogates, references, crafted, after)
    eligible = torch.nonzero(after != before).squeeze(1)
    order = torch.sort(score[eligible], descending=True, stable=True).indices
    chosen = eligible[order[:size]]
    return crafted[chosen], after[chosen], score[chosen]
