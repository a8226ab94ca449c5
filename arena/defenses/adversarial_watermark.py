"""Adversarial training with adversarial watermarks (Thakkar, Zizzo and Maffeis, "Elevating
Defenses: Bridging Adversarial Training and Watermarking for Model Resilience", DAI workshop at
AAAI 2024, arXiv:2312.14260).

Adversarial training and trigger-set watermarks pull against each other: a robust model answers
the same label throughout a small ball around every training image, while a watermark asks it to
answer an owner-chosen label on a few inputs close to real images. The paper resolves the
conflict with two budgets: the victim is adversarially trained at ``eps_train`` and its watermark
keys are adversarial examples at a larger budget ``eps_key``, so no key lies inside the ball that
adversarial training makes robust. The paper evaluates this on MNIST and Fashion-MNIST against
black-, grey- and white-box model stealing, and reports that it keeps more robustness than
out-of-distribution watermarks and survives pruning and fine-tuning. Summaries of the paper
state its condition on the key budget as ``eps_key > eps_train + alpha`` (``alpha`` the attack's
step): a training perturbation that is not projected back may reach ``eps_train + alpha``. Here
every training perturbation is projected onto the ``eps_train`` ball, so ``eps_key > eps_train``
is the condition enforced. (The paper's own budgets, accuracies and watermark scores could not
be retrieved while this was written; the docs report what is measured here.)

What is built here, all L-infinity on inputs in [0, 1]:

1. Keys (cached as their own artefact): ``num_keys`` training images drawn by a keyed RNG
   (``key_seed``), each pushed by untargeted PGD (``key_steps`` steps, random start) away from
   its true label on the model handed to :meth:`prepare` (the victim as trained), within
   ``eps_key``; each key is assigned a label other than its true one by the same RNG.
2. The served victim: the victim's architecture trained from scratch for ``epochs`` on
   adversarial examples at ``eps_train`` (``train_steps`` = 1 is fast adversarial training, FGSM
   from a random start with step 1.25 eps, Wong et al. 2020; more steps is PGD with step
   2.5 eps / steps, Madry et al. 2018), every mini-batch joined by ``keys_per_batch`` keys with
   their assigned labels (the keys themselves are not perturbed).
3. Verification: a suspect's top-1 agreement with the assigned labels on the keys, against
   ``threshold``. An independent model agrees on about 1 / (C - 1) of them or fewer (the labels
   are random wrong ones), so 0.5 over 100 keys is far out of its reach.

Choices made here where the paper's could not be checked, and departures: the keys take keyed
random wrong labels, not the class an attack pushes them to (keys crafted by a targeted attack
toward their label were given that label by independently trained digits MLPs on 65-80 % of
them, so independent models would be claimed stolen; with random labels they agree on 4-15 %);
the keys are crafted on the undefended victim and the served victim is trained from scratch;
the training budget of 15 epochs matches the arena's victims, not the paper's schedule.

Defaults are sized for a Fashion-MNIST LeNet-5 on this CPU (fast adversarial training costs
about twice plain training: a few minutes for 15 epochs). On a small dataset such as digits
(8 mini-batches an epoch) the keys are shown too rarely to be learnt at these defaults: give
more ``epochs`` or ``keys_per_batch`` there. ``threshold`` only changes verification, so tuning
it retrains nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arena.defenses.base import Defense, FloatRange, IntRange, OwnershipKeys, ParamSpace
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.validation import check_integer, check_number

BATCH_SIZE = 128
FGSM_STEP = 1.25
"""fast adversarial training's step, in units of the budget (Wong et al. 2020)"""
PGD_STEP = 2.5
"""PGD's total step length, in units of the budget, spread over its steps (Madry et al. 2018)"""


class WatermarkKeys(nn.Module):
    """The watermark keys and their assigned labels, as buffers (so they cache like a model)."""

    def __init__(self, num_keys: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("x", torch.zeros(num_keys, *input_shape))
        self.register_buffer("y", torch.zeros(num_keys, dtype=torch.int64))


@DEFENSES.register("adversarial_watermark")
@dataclass(frozen=True)
class AdversarialWatermark(Defense):
    """Adversarially trained victim watermarked with adversarial examples at a larger budget."""

    eps_train: float = 0.1
    """L-infinity budget of adversarial training (training)"""
    eps_key: float = 0.25
    """L-infinity budget of the watermark keys; must exceed ``eps_train`` (training)"""
    train_steps: int = 1
    """attack steps per mini-batch: 1 is FGSM from a random start, more is PGD (training)"""
    key_steps: int = 10
    """PGD steps that craft each key (training)"""
    num_keys: int = 100
    """watermark keys (training)"""
    keys_per_batch: int = 16
    """keys joined to every training mini-batch (training)"""
    epochs: int = 15
    """epochs of adversarial training (training)"""
    lr: float = 3e-3
    """Adam learning rate, annealed to zero on a cosine (training)"""
    seed: int = 0
    """seed of the initial weights and of the training draws (training)"""
    key_seed: int = 0
    """the owner's secret: which images become keys, their random starts and labels (training)"""
    threshold: float = 0.5
    """a suspect agreeing with at least this share of the keys' labels is claimed stolen"""

    needs_training: ClassVar[bool] = True
    search_space: ClassVar[dict[str, ParamSpace]] = {
        "eps_train": FloatRange(0.02, 0.2),
        "eps_key": FloatRange(0.25, 0.5),
        "num_keys": IntRange(20, 200),
    }

    def __post_init__(self) -> None:
        check_number("eps_train", self.eps_train, low=0, low_open=True)
        check_number("eps_key", self.eps_key, low=0, high=1, low_open=True)  # inputs lie in [0, 1]
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("threshold", self.threshold, low=0, high=1, low_open=True)
        if self.eps_key <= self.eps_train:
            raise ValueError(
                f"eps_key ({self.eps_key}) must exceed eps_train ({self.eps_train}): keys inside "
                "the adversarially trained ball conflict with robustness"
            )
        for name in ("train_steps", "key_steps", "num_keys", "keys_per_batch", "epochs"):
            check_integer(name, getattr(self, name), low=1)
        check_integer("seed", self.seed, low=0)
        check_integer("key_seed", self.key_seed, low=0)

    def check_task(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"watermark keys need a wrong label: {num_classes} class(es)")

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        train = context.train
        if self.num_keys > len(train):
            raise ValueError(f"num_keys ({self.num_keys}) exceeds the {len(train)} training images")
        key_params = {
            "eps_key": self.eps_key,
            "key_steps": self.key_steps,
            "num_keys": self.num_keys,
            "key_seed": self.key_seed,
            "base": weights_digest(model),
        }

        def craft(store: nn.Module) -> None:
            x, y, _ = craft_keys(
                model,
                train.x,
                train.y,
                self.num_keys,
                self.eps_key,
                self.key_steps,
                context.num_classes,
                self.key_seed,
            )
            store.get_buffer("x").copy_(x)
            store.get_buffer("y").copy_(y)

        keys = context.cached_model(
            "adversarial_watermark-keys",
            key_params,
            lambda: WatermarkKeys(self.num_keys, context.input_shape),
            craft,
        )
        key_x, key_y = keys.get_buffer("x"), keys.get_buffer("y")

        def fit(fresh: nn.Module) -> None:
            adversarial_fit(
                fresh,
                train.x,
                train.y,
                key_x,
                key_y,
                eps=self.eps_train,
                steps=self.train_steps,
                keys_per_batch=self.keys_per_batch,
                epochs=self.epochs,
                lr=self.lr,
                seed=self.seed,
            )

        victim_params = {
            **key_params,
            "eps_train": self.eps_train,
            "train_steps": self.train_steps,
            "keys_per_batch": self.keys_per_batch,
            "epochs": self.epochs,
            "lr": self.lr,
            "seed": self.seed,
        }
        watermarked = context.cached_model(
            "adversarial_watermark-victim", victim_params, context.new_model, fit
        )
        self.models["keys"] = keys
        return watermarked

    def ownership_keys(self, state: Any) -> OwnershipKeys | None:
        keys = self.models.get("keys")
        if keys is None:
            return None
        return OwnershipKeys(
            keys.get_buffer("x").clone(), keys.get_buffer("y").clone(), self.threshold
        )


def weights_digest(model: nn.Module) -> str:
    """A short hash of a model's weights: keys crafted on another model are another artefact."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def linf_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Untargeted L-infinity attack from a uniform random start: ``steps`` signed-gradient ascent
    steps on the cross-entropy of ``y``, each projected onto the ``eps`` ball and onto [0, 1].
    Only the input's gradient is taken (the model's parameter gradients are left untouched)."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def attack_step(eps: float, steps: int) -> float:
    """The step length of a ``steps``-step attack at budget ``eps``: FGSM's for one step."""
    return FGSM_STEP * eps if steps == 1 else PGD_STEP * eps / steps


def craft_keys(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_keys: int,
    eps: float,
    steps: int,
    num_classes: int,
    key_seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_keys`` keyed training images pushed off their label by PGD within ``eps`` on
    ``model``, each with a keyed random wrong label: ``(keys, labels, image indices)``."""
    generator = torch.Generator().manual_seed(key_seed)
    chosen = torch.randperm(len(labels), generator=generator)[:num_keys]
    base, truth = images[chosen], labels[chosen]
    shift = torch.randint(1, num_classes, (num_keys,), generator=generator)
    assigned = (truth + shift) % num_classes
    was_training = model.training
    model.eval()
    keys = linf_attack(model, base, truth, eps, steps, attack_step(eps, steps), generator)
    model.train(was_training)
    return keys, assigned, chosen


def adversarial_fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    key_x: torch.Tensor,
    key_y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    keys_per_batch: int,
    epochs: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """Adversarial training at ``eps`` with the keys joined to every mini-batch (Adam, cosine
    annealing, deterministic given ``seed``). The keys cycle through a fresh keyed order."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = int(x.shape[0])
    total = epochs * -(-n // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    per_batch = min(keys_per_batch, len(key_y))
    key_order = torch.randperm(len(key_y), generator=generator)
    cursor = 0
    step_size = attack_step(eps, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            adversarial = linf_attack(model, x[idx], y[idx], eps, steps, step_size, generator)
            if cursor + per_batch > len(key_y):
                key_order, cursor = torch.randperm(len(key_y), generator=generator), 0
            chosen = key_order[cursor : cursor + per_batch]
            cursor += per_batch
            inputs = torch.cat([adversarial, key_x[chosen]])
            targets = torch.cat([y[idx], key_y[chosen]])
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
    return model.eval()
