"""Dataset inference (Maini, Yaghini and Papernot, "Dataset Inference: Ownership Resolution in
Machine Learning", ICLR 2021).

A model trained on the owner's data, or distilled from a model that was, has learnt that data's
decision boundaries: its training points lie further from a boundary than points it never saw.
The owner does not change the victim. It measures margins ("how far must I move this point
before the label changes") on points it trained on (private) and on points of the same
distribution it did not train on (public), trains a small regressor that scores margins as
"private" against "public", and keeps a few held-out points of each kind. A suspect is judged by
a hypothesis test: its regressor scores on the held-out private points are higher than on the
public ones (one-sided Welch t-test, H0: private mean <= public mean); p below ``alpha`` claims
it. A model trained on other data has no reason to separate the two sets, so its p-value is
uniform-ish and the claim is rare.

What is built here (``prepare`` returns the victim unchanged; ``respond`` changes nothing):

1. Private points: the victim's training split (``context.train``, true labels); public points:
   ``context.public`` (the dataset's test split, which the defender owns). A keyed RNG (``seed``)
   draws ``train_samples`` of each to train the regressor and ``samples`` others of each, held
   apart, as the evidence.
2. Margin features, per point with its true label, for three norms (L-infinity, L2, L1):
   ``features="blind_walk"`` (black box, the paper's default for label-only access): ``directions``
   random directions per norm (uniform, Gaussian and Laplace noise of scales 0.005, 0.005 and 0.01
   times ``step_scale``), walked out in whole multiples of the direction (clipped to [0, 1]) for at
   most ``max_steps`` steps until the label changes; the feature is the norm of the final step.
   ``features="min_gd"`` (white box, MinGD): for every class, gradient steps on the input
   (signed, L2-normalised, or top-k L1 steps of 0.001, 0.01 and 1/k) that raise that class's
   logit to the top, at most ``gd_steps`` steps; features are the distances, sorted over classes.
   Every model is walked along the same keyed directions (so victim and suspect differ in their
   boundaries only, not in the luck of the draw).
3. The regressor: features normalised per norm by the victim's mean and std, a 2-layer net
   (hidden 100, tanh output) trained full-batch by SGD (lr 0.1, ``regressor_epochs``) on the loss
   ``-mean((2 * member - 1) * score)``.
4. ``judge``: the suspect's features on the held-out points, the regressor's scores, scipy's
   one-sided Welch t-test. ``keys`` is the number of points the suspect was checked on (private
   plus public).

Parameters against the paper's reference code (cleverhans-lab/dataset-inference): blind walk 10
directions per norm, noise scales 0.005 / 0.005 / 0.01, 50 steps (SVHN: twice the scale, 100
steps); MinGD 500 steps, steps 0.001 (L-inf), 0.01 (L2), 1/k with k = 100 (L1); regressor
Linear(30, 100)-ReLU-Linear(100, 1)-Tanh, SGD lr 0.1, 1000 epochs on 500 points of each kind;
p-values from ``ttest_ind(..., alternative="greater", equal_var=False)`` on ``m`` revealed
samples (the paper reports > 99 % confidence with fewer than 50 private samples on CIFAR10).
Departures: the regressor trains on ``train_samples`` = 200 points of each kind (the digits test
split has 397 images); held-out ``samples`` = 50; the paper normalises by the teacher's
training features only, here by the regressor's training features of both kinds; the paper
repeats the test over random subsets and combines p-values, here one test on all held-out
points; MinGD's L1 step moves the k = min(100, dims) coordinates of largest gradient without the
paper's ``gap`` refinement. ``step_scale`` exists because inputs differ: on 8x8 digits the
paper's CIFAR10 scales leave about half the walks unflipped after 50 steps (a quarter of the
pixel range); ``step_scale`` = 4 leaves about one in eight.

What was measured (CPU, one thread). Dataset inference needs a model that has learnt its
training points better than unseen ones. The arena's 20-epoch digits MLP (98.9 % on its training
split, 96.0 % on the test split) gives no usable gap: p = 0.04 (blind walk) and 0.74 (MinGD) for
the victim itself, and 0.1-0.9 for every other model; the same holds for the Fashion-MNIST
LeNet-5 (the arena's 15-epoch victim, 90.6 % on the test split): victim p = 0.73 with the blind
walk and 0.66 with MinGD (100 steps), other models 0.43-0.96. A digits MLP fitted to 300 images
for 100 epochs (100 % / 94 %) is claimed with MinGD (200 steps, 100 held-out samples): victim p
= 0.0014, a model trained on the same images 0.0006, a model distilled from the victim on the
attacker pool 0.04, models trained on the attacker pool 0.49-0.68; the blind walk stays at
0.2-0.7 for all of them. Costs: blind walk on digits, build 2-3 s, judge 0.3 s; MinGD on digits
(200 steps) build 7 s, judge 5 s; on Fashion-MNIST LeNet-5 the blind walk builds in 41 s and
judges in 6-10 s, MinGD (100 steps) in 230 s and 40-85 s.

Verification failures: a suspect that raises or answers NaN or infinity raises
:class:`arena.errors.VerificationFailed`, which :func:`arena.ownership.verify_ownership` records
as an unverified verdict. A test with no variance in either group (saturated scores) is decided
by its limit: p = 0 when the private mean is above the public one, else p = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats
from torch import nn

from arena.data import Split
from arena.defenses.adversarial_watermark import weights_digest
from arena.defenses.base import (
    Defense,
    FloatRange,
    IntRange,
    Judgement,
    OwnershipEvidence,
    ParamSpace,
)
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.errors import VerificationFailed
from arena.validation import check_choice, check_integer, check_number

FEATURES = ("blind_walk", "min_gd")
NORMS = 3
"""L-infinity, L2, L1: every feature is measured in each"""
WALK_SCALES = (0.005, 0.005, 0.01)
"""the blind walk's noise per norm: uniform half-width, Gaussian std, Laplace scale"""
GD_STEPS = (0.001, 0.01, 1.0)
"""MinGD's step per norm (L1: spread over its top-k coordinates)"""
L1_TOP_K = 100
HIDDEN = 100
REGRESSOR_LR = 0.1
ROWS_PER_CHUNK = 8192
"""walk rows evaluated at once (bounds memory on large inputs)"""

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WalkParams:
    """How margins are measured: the same for the victim and for every suspect."""

    features: str
    directions: int
    step_scale: float
    max_steps: int
    gd_steps: int
    seed: int

    def width(self, num_classes: int) -> int:
        """Features per point."""
        per_norm = self.directions if self.features == "blind_walk" else num_classes
        return per_norm * NORMS


class MarginRegressor(nn.Module):
    """Scores margin features: high for points the model was trained on. Normalisation buffers
    travel with the weights (so the regressor caches and pickles as one module)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(NORMS))
        self.register_buffer("std", torch.ones(NORMS))
        self.net = nn.Sequential(
            nn.Linear(width, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1), nn.Tanh()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` ``[N, per_norm, NORMS]`` to scores ``[N]`` in (-1, 1)."""
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        scores: torch.Tensor = self.net(((features - mean) / std).flatten(1))
        return scores.squeeze(1)


@dataclass(frozen=True)
class DatasetInferenceEvidence(OwnershipEvidence):
    """Held-out private and public points, the regressor trained on the victim's margins and
    the test's level: a suspect is claimed when its private points score higher (p < alpha)."""

    private: Split
    public: Split
    regressor: MarginRegressor
    walk: WalkParams
    num_classes: int
    alpha: float

    def judge(self, suspect: nn.Module) -> Judgement:
        logits = guarded_logits(suspect)
        try:
            inside = self.features(logits, self.private)
            outside = self.features(logits, self.public)
        except VerificationFailed:
            raise
        except Exception as exc:  # e.g. MinGD on a suspect without gradients
            raise VerificationFailed(f"the suspect's margins could not be measured: {exc}") from exc
        with torch.no_grad():
            scores_in, scores_out = self.regressor(inside), self.regressor(outside)
        p = one_sided_welch(scores_in.numpy(), scores_out.numpy())
        count = len(self.private) + len(self.public)
        return Judgement(1.0 - p, 1.0 - self.alpha, count, p < self.alpha, p)

    def features(self, logits: Logits, split: Split) -> torch.Tensor:
        return margin_features(logits, split.x, split.y, self.walk, self.num_classes)


@DEFENSES.register("dataset_inference", version=1)
@dataclass(frozen=True)
class DatasetInference(Defense):
    """Dataset inference: a suspect whose margins tell the victim's training points from
    public ones (one-sided t-test) is claimed; the victim and its answers are unchanged."""

    builds_models: ClassVar[bool] = True

    features: str = "blind_walk"
    """margin features: "blind_walk" (black box) or "min_gd" (white box, gradients)"""
    directions: int = 10
    """blind walk: random directions per norm (the paper's 10)"""
    step_scale: float = 4.0
    """blind walk: multiple of the paper's noise scales (1 = CIFAR10's; 8x8 digits and 28x28
    images need longer steps to cross a boundary within ``max_steps``)"""
    max_steps: int = 50
    """blind walk: steps along each direction before giving up (the paper's 50)"""
    gd_steps: int = 500
    """MinGD: gradient steps per target class (the paper's 500)"""
    train_samples: int = 200
    """points of each kind (private, public) the regressor trains on (the paper: 500)"""
    samples: int = 50
    """held-out points of each kind a suspect is tested on"""
    alpha: float = 0.01
    """significance level: p below it claims the suspect"""
    regressor_epochs: int = 1000
    """full-batch SGD epochs of the regressor (the paper's 1000)"""
    seed: int = 0
    """keys the choice of points, the walk's directions and the regressor's initial weights"""

    preserves_argmax: ClassVar[bool] = True
    search_space: ClassVar[dict[str, ParamSpace]] = {
        "samples": IntRange(10, 50),
        "alpha": FloatRange(0.001, 0.05, log=True),
    }

    def __post_init__(self) -> None:
        check_choice("features", self.features, FEATURES)
        for name in ("directions", "max_steps", "gd_steps", "samples", "regressor_epochs"):
            check_integer(name, getattr(self, name), low=1)
        check_integer("train_samples", self.train_samples, low=2)
        check_integer("seed", self.seed, low=0)
        check_number("step_scale", self.step_scale, low=0, low_open=True)
        check_number("alpha", self.alpha, low=0, high=1, low_open=True, high_open=True)

    def walk(self) -> WalkParams:
        return WalkParams(
            self.features,
            self.directions,
            self.step_scale,
            self.max_steps,
            self.gd_steps,
            self.seed,
        )

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        public = context.public
        if public is None:
            raise ValueError(
                "dataset_inference needs public points (images the victim was not trained on): "
                "the prepare context has no public split"
            )
        needed = self.train_samples + self.samples
        for kind, split in (("training", context.train), ("public", public)):
            if len(split) < needed:
                raise ValueError(
                    f"dataset_inference needs {needed} {kind} points (train_samples + samples), "
                    f"got {len(split)}"
                )
        generator = torch.Generator().manual_seed(self.seed)
        private_fit, private_test = keyed_halves(
            context.train, self.train_samples, needed, generator
        )
        public_fit, public_test = keyed_halves(public, self.train_samples, needed, generator)
        walk = self.walk()
        params = {
            **{k: v for k, v in self.params().items() if k not in ("alpha", "samples")},
            "public": len(public),
            "victim": weights_digest(model),
        }

        def fit(regressor: nn.Module) -> None:
            logits = guarded_logits(model)
            inside = margin_features(
                logits, private_fit.x, private_fit.y, walk, context.num_classes
            )
            outside = margin_features(logits, public_fit.x, public_fit.y, walk, context.num_classes)
            assert isinstance(regressor, MarginRegressor)
            fit_regressor(regressor, inside, outside, self.regressor_epochs, self.seed)

        regressor = context.cached_model(
            "dataset_inference-regressor",
            params,
            lambda: MarginRegressor(walk.width(context.num_classes)),
            fit,
        )
        assert isinstance(regressor, MarginRegressor)
        self.models["regressor"] = regressor
        self.models["held_out"] = HeldOut(private_test, public_test, context.num_classes)
        return model

    def ownership_keys(self, state: Any) -> DatasetInferenceEvidence | None:
        regressor, held_out = self.models.get("regressor"), self.models.get("held_out")
        if not isinstance(regressor, MarginRegressor) or not isinstance(held_out, HeldOut):
            return None
        return DatasetInferenceEvidence(
            held_out.split("private"),
            held_out.split("public"),
            regressor,
            self.walk(),
            held_out.num_classes,
            self.alpha,
        )


class HeldOut(nn.Module):
    """The held-out private and public points, as buffers (kept among the defense's models)."""

    def __init__(self, private: Split, public: Split, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        for name, split in (("private", private), ("public", public)):
            self.register_buffer(f"{name}_x", split.x.clone())
            self.register_buffer(f"{name}_y", split.y.clone())

    def split(self, name: str) -> Split:
        return Split(self.get_buffer(f"{name}_x").clone(), self.get_buffer(f"{name}_y").clone())


def keyed_halves(
    split: Split, first: int, total: int, generator: torch.Generator
) -> tuple[Split, Split]:
    """A keyed draw of ``total`` points of ``split``: the first ``first`` and the rest."""
    order = torch.randperm(len(split), generator=generator)[:total]
    head, tail = order[:first], order[first:]
    return Split(split.x[head], split.y[head]), Split(split.x[tail], split.y[tail])


def guarded_logits(model: nn.Module) -> Logits:
    """``model``'s logits in eval mode; a model that raises or answers NaN or infinity is a
    :class:`VerificationFailed` (a suspect is untrusted: it must not crash the referee)."""

    def logits(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        try:
            out = model(x)
        except Exception as exc:  # any failure of an untrusted model
            raise VerificationFailed(
                f"the suspect failed on the verification points: {exc}"
            ) from exc
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise VerificationFailed("the suspect's output is not a [batch, classes] tensor")
        if not bool(torch.isfinite(out).all()):
            raise VerificationFailed("the suspect answered NaN or infinity")
        return out

    return logits


def margin_features(
    logits: Logits, x: torch.Tensor, y: torch.Tensor, walk: WalkParams, num_classes: int
) -> torch.Tensor:
    """Margins of the model behind ``logits`` at ``(x, y)``: ``[N, per_norm, NORMS]``."""
    if walk.features == "blind_walk":
        return blind_walk(logits, x, y, walk)
    return min_gd(logits, x, num_classes, walk)


def norms(delta: torch.Tensor) -> torch.Tensor:
    """L-infinity, L2 and L1 norms of each row: ``[N, NORMS]``."""
    flat = delta.flatten(1)
    return torch.stack([flat.abs().amax(dim=1), flat.norm(dim=1), flat.abs().sum(dim=1)], dim=1)


def walk_directions(x: torch.Tensor, walk: WalkParams) -> torch.Tensor:
    """Keyed random directions ``[NORMS, directions, N, *shape]``: uniform, Gaussian, Laplace."""
    generator = torch.Generator().manual_seed(walk.seed)
    shape = (walk.directions, *x.shape)
    uniform, normal, laplace = (s * walk.step_scale for s in WALK_SCALES)
    u = torch.rand(shape, generator=generator) - 0.5
    lap = -laplace * u.sign() * torch.log1p(-2 * u.abs()).clamp_max(0.0)
    return torch.stack(
        [
            (torch.rand(shape, generator=generator) * 2 - 1) * uniform,
            torch.randn(shape, generator=generator) * normal,
            lap,
        ]
    )


def blind_walk(logits: Logits, x: torch.Tensor, y: torch.Tensor, walk: WalkParams) -> torch.Tensor:
    """The paper's blind walk: along each keyed direction take whole multiples of it until the
    label is no longer ``y`` (or ``max_steps``); the feature is the norm of the last step,
    measured in the norm whose noise drew the direction."""
    base = walk_directions(x, walk)  # [NORMS, D, N, *shape]
    n = int(x.shape[0])
    rows = base.reshape(-1, *x.shape[1:])
    points = x.repeat(NORMS * walk.directions, *([1] * (x.dim() - 1)))
    labels = y.repeat(NORMS * walk.directions)
    final = torch.zeros_like(rows)
    remaining = torch.arange(rows.shape[0])
    with torch.no_grad():
        for step in range(1, walk.max_steps + 1):
            here = points[remaining]
            delta = (rows[remaining] * step).clamp(-here, 1 - here)
            final[remaining] = delta
            moved = predict_labels(logits, here + delta) != labels[remaining]
            remaining = remaining[~moved]
            if remaining.numel() == 0:
                break
    per_row = norms(final).reshape(NORMS, walk.directions, n, NORMS)
    picked = torch.stack([per_row[k, :, :, k] for k in range(NORMS)], dim=-1)  # [D, N, NORMS]
    return picked.permute(1, 0, 2).contiguous()


def predict_labels(logits: Logits, x: torch.Tensor) -> torch.Tensor:
    """Top-1 labels in chunks (the walk evaluates many rows at once)."""
    return torch.cat(
        [logits(x[i : i + ROWS_PER_CHUNK]).argmax(dim=1) for i in range(0, len(x), ROWS_PER_CHUNK)]
    )


def min_gd(logits: Logits, x: torch.Tensor, num_classes: int, walk: WalkParams) -> torch.Tensor:
    """MinGD: for every class, the distance (in each norm) of gradient steps that make it the
    top class; per norm the distances are sorted over classes (the paper's features)."""
    n = int(x.shape[0])
    points = x.repeat(num_classes, *([1] * (x.dim() - 1)))
    targets = torch.arange(num_classes).repeat_interleave(n)
    found = [
        norms(gd_to_targets(logits, points, targets, k, walk.gd_steps))[:, k] for k in range(NORMS)
    ]
    per_class = torch.stack(found, dim=1).reshape(num_classes, n, NORMS)
    return per_class.permute(1, 0, 2).sort(dim=1).values.contiguous()


def gd_to_targets(
    logits: Logits, x: torch.Tensor, targets: torch.Tensor, norm: int, steps: int
) -> torch.Tensor:
    """Steps in ``norm``'s geometry raising each row's target logit to the top; rows stop once
    it is (their perturbation is then kept)."""
    delta = torch.zeros_like(x)
    remaining = torch.arange(x.shape[0])
    top_k = min(L1_TOP_K, int(x[0].numel()))
    with torch.enable_grad():
        for _ in range(steps):
            step_delta = delta[remaining].clone().requires_grad_(True)
            out = logits(x[remaining] + step_delta)
            still = out.argmax(dim=1) != targets[remaining]
            if not bool(still.any()):
                break
            aim = targets[remaining][still]
            chosen = out[still]
            loss = (chosen.gather(1, aim[:, None]) - chosen.max(dim=1, keepdim=True).values).sum()
            (grad,) = torch.autograd.grad(loss, step_delta)
            remaining = remaining[still]
            here = x[remaining]
            moved = delta[remaining] + gd_step(grad[still], norm, top_k)
            delta[remaining] = moved.clamp(-here, 1 - here).detach()
    return delta


def gd_step(grad: torch.Tensor, norm: int, top_k: int) -> torch.Tensor:
    """One ascent step of the norm's size: signed (L-inf), normalised (L2), or spread over the
    ``top_k`` coordinates of largest gradient (L1)."""
    size = GD_STEPS[norm]
    if norm == 0:
        return size * grad.sign()
    flat = grad.flatten(1)
    if norm == 1:
        unit: torch.Tensor = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (size * unit).view_as(grad)
    keep = flat.abs().topk(top_k, dim=1).indices
    step = torch.zeros_like(flat).scatter(1, keep, flat.gather(1, keep).sign() * size / top_k)
    return step.view_as(grad)


def fit_regressor(
    regressor: MarginRegressor,
    inside: torch.Tensor,
    outside: torch.Tensor,
    epochs: int,
    seed: int,
) -> None:
    """The paper's regressor: per-norm normalisation, then full-batch SGD on
    ``-mean((2 * member - 1) * score)`` (private points member 1, public 0)."""
    features = torch.cat([inside, outside])
    sign = torch.cat([torch.ones(len(inside)), -torch.ones(len(outside))])
    regressor.get_buffer("mean").copy_(features.mean(dim=(0, 1)))
    regressor.get_buffer("std").copy_(features.std(dim=(0, 1)).clamp_min(1e-6))
    torch.manual_seed(seed)
    for layer in regressor.net:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    optimizer = torch.optim.SGD(regressor.parameters(), lr=REGRESSOR_LR)
    regressor.train()
    for _ in range(epochs):
        loss = -(sign * regressor(features)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    regressor.eval()


def one_sided_welch(inside: np.ndarray, outside: np.ndarray) -> float:
    """p-value of Welch's t-test that ``inside``'s mean exceeds ``outside``'s. With no variance
    in either group the statistic is infinite or undefined: its limit decides (0 when inside's
    mean is above, else 1), so a verdict is never NaN."""
    a, b = inside.astype(np.float64), outside.astype(np.float64)
    if len(a) >= 2 and len(b) >= 2 and (a.var(ddof=1) > 0 or b.var(ddof=1) > 0):
        p = float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
        if math.isfinite(p):
            return min(max(p, 0.0), 1.0)
    return 0.0 if float(a.mean()) > float(b.mean()) else 1.0
