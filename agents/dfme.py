"""Data-Free Model Extraction (Truong et al., CVPR 2021): steal with a generator, no data at all.

A generator maps Gaussian noise to images inside the oracle's value range (``tanh`` scaled to
``[low, high]``) and the two players take turns on those images:

* the **student** (the substitute, ``knowledge.make_substitute``) minimises the ℓ1 distance
  between its logits and the victim's *approximate logits*. The oracle returns probabilities, so
  DFME recovers logits up to a per-row constant: ``log p`` (clamped away from zero, so one-hot
  and top-k answers stay finite), mean-centred per row;
* the **generator** maximises the same disagreement, looking for images where the student is
  still wrong. The victim is a black box, so the gradient of the loss with respect to each
  generated image is estimated by forward differences along ``m`` random unit directions of size
  ``ε`` (in the generator's pre-``tanh`` space, so every perturbed point stays in range) and
  back-propagated through the generator. Every perturbed point is a query and the oracle charges
  it: a generator step costs ``batch_size × (m + 1)`` queries, a student step ``batch_size``.

One iteration is ``generator_steps`` generator steps then ``student_steps`` student steps, each
on a fresh noise batch. The loop ends when the budget is spent: a step the remaining budget cannot
pay in full runs on a smaller batch, so the whole budget is used and never exceeded (and no call
exceeds the service's ``max_batch``). A detector's refusal ends the attack with the student as it
is. All randomness comes from the ``rng`` argument: the same match twice gives the same student.

Beyond the paper, a replay buffer: every answer paid for (the student steps' images and the
unperturbed points of the generator steps) is kept, and once the budget is spent the student is
fitted on the whole buffer for ``replay_steps`` more mini-batches, with the same ℓ1 loss. No extra
query is made. At the paper's budgets the online steps suffice; at 1k-50k they are tens to
hundreds. Against the Fashion-MNIST LeNet-5 (``benchmarks/dfme.py``, which measures both), the
paper's student (``replay_steps=0``) stays at chance up to 10k queries and reaches ~0.5 at 50k;
with the replay it reaches ~0.35 at 1k, ~0.5 at 5k and ~0.65 at 50k.

Sizing for this 2-core CPU: the paper spends millions of queries (2M for SVHN, 20M for
CIFAR-10) with a 64-channel DCGAN generator on a GPU; here budgets are 1k-50k. The generator
keeps the DCGAN-style stack (linear to a quarter-size map, two upsample + 3x3 conv blocks with
batch norm) with ``generator_width`` = 16 channels: ~116k parameters and ~5.6M multiply-adds per
28x28 image, about 13 LeNet-5 forward passes, so it dominates the loop's time. Batches are 64
instead of 256, the student uses Adam instead of SGD with lr 0.1, and the generator's learning
rate is 0.1 instead of 1e-4 (with tens of generator steps the paper's rate leaves it where it
started). The replay costs a fixed number of mini-batches, so the attack's time grows only with
the queries themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.attacker import ATTACKS, Attacker
from arena.errors import BudgetExhausted, InvalidParameters, QueryRefused
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.training import TrainRecipe
from arena.validation import check_integer, check_number

REPLAY_MAX_EPOCHS = 200
"""at tiny budgets the replay stops after this many passes over the buffer (a cost guard; at 1k
queries and more the ``replay_steps`` are fewer than that)"""


@ATTACKS.register("dfme")
@dataclass(frozen=True)
class DFME(Attacker):
    """Data-free model extraction: a generator and the student play a zeroth-order min-max game."""

    needs_pool = False

    batch_size: int = 64
    """generated images per generator or student step, and the replay mini-batch (the paper:
    256; smaller batches mean more generator moves per query, which measured better here)"""
    grad_directions: int = 1
    """m: random unit directions per image in the forward-difference gradient estimate"""
    grad_epsilon: float = 1e-3
    """ε: the step along each direction, in the generator's pre-tanh space"""
    lr: float = 3e-3
    """student Adam learning rate (online steps and replay)"""
    generator_lr: float = 0.1
    """generator Adam learning rate (the paper: 1e-4, for ~10^4 generator steps; with tens of
    steps a fast-moving generator explores more images, measured best here)"""
    generator_steps: int = 1
    """n_G: generator steps per iteration"""
    student_steps: int = 5
    """n_S: student steps per iteration"""
    latent_dim: int = 64
    """dimension of the generator's Gaussian noise (the paper: 256)"""
    generator_width: int = 16
    """channels of the generator's last hidden block (twice that before it; the paper: 64)"""
    prob_floor: float = 1e-6
    """probabilities are clamped to at least this before the log (one-hot, top-k answers)"""
    replay_steps: int = 2700
    """student mini-batches over the replay buffer once the budget is spent (0: the paper); a
    fixed count, so the cost does not grow with the budget (~40 passes over 5k answers)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = ("batch_size", "grad_directions", "generator_steps", "student_steps")
        for name in (*positive, "latent_dim", "generator_width"):
            check_integer(name, getattr(self, name), low=1)
        check_integer("replay_steps", self.replay_steps, low=0)
        bounds = {"lr": 10, "generator_lr": 10, "grad_epsilon": 1, "prob_floor": 0.1}
        for name, top in bounds.items():
            check_number(name, getattr(self, name), low=0, high=top, low_open=True, high_open=True)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        seed = torch_seed(rng)
        with torch.random.fork_rng(devices=[]):  # deterministic, and the caller's RNG untouched
            torch.manual_seed(seed)
            return self._play(oracle, knowledge, seed)

    def _play(self, oracle: Oracle, knowledge: Knowledge, seed: int) -> nn.Module:
        # the noise is drawn on the CPU (the same numbers on every device) and moved to the
        # device the student and the generator compute on; queries go to the oracle on the CPU
        noise = torch.Generator().manual_seed(seed + 1)
        device = torch.device(knowledge.device)
        student = knowledge.make_substitute(seed)
        generator = build_generator(knowledge.input_shape, self.latent_dim, self.generator_width)
        generator = generator.to(device)
        student_opt = torch.optim.Adam(student.parameters(), lr=self.lr)
        generator_opt = torch.optim.Adam(generator.parameters(), lr=self.generator_lr)
        low, high = oracle.input_spec.low, oracle.input_spec.high
        victim = VictimLogits(oracle, self.prob_floor)
        replay = ReplayBuffer()
        m = self.grad_directions

        def to_range(pre: torch.Tensor) -> torch.Tensor:
            scaled = low + (high - low) * (torch.tanh(pre) + 1) / 2
            return scaled.clamp(low, high)

        def sample(n: int) -> torch.Tensor:
            # at least two images: batch norm needs more than one value per channel
            z = torch.randn(max(n, 2), self.latent_dim, generator=noise).to(device)
            pre: torch.Tensor = generator(z)
            return pre[:n]

        def generator_step(n: int) -> None:
            pre = sample(n)
            with torch.no_grad():
                base = pre.detach().unsqueeze(1)
                dim = math.prod(base.shape[2:])
                u = torch.randn(n, m, dim, generator=noise).to(device)
                u = (u / u.norm(dim=2, keepdim=True)).view(n, m, *base.shape[2:])
                x = to_range(torch.cat([base + self.grad_epsilon * u, base], dim=1).flatten(0, 1))
                target = victim(x)
                if target is None:
                    return
                student.eval()
                loss = (student(x) - target).abs().mean(dim=1).view(n, m + 1)
                replay.add(x.view(n, m + 1, *x.shape[1:])[:, m], target.view(n, m + 1, -1)[:, m])
                change = (loss[:, :m] - loss[:, m:]).view(n, m, *[1] * (base.dim() - 2))
                # forward differences: d/ε Δloss u, averaged over the directions and the batch
                grad = (dim / self.grad_epsilon * change * u).mean(dim=1) / n
            generator_opt.zero_grad(set_to_none=True)
            # ascend: the generator maximises the disagreement
            pre.backward(-grad)  # type: ignore[no-untyped-call]
            generator_opt.step()

        def student_step(n: int) -> None:
            with torch.no_grad():
                x = to_range(sample(n))
            target = victim(x)
            if target is None:
                return
            replay.add(x, target)
            student.train()
            loss = F.l1_loss(student(x), target)
            student_opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            student_opt.step()

        generator.train()
        while oracle.remaining > 0 and not victim.stopped:
            for _ in range(self.generator_steps):
                n = min(self.batch_size, oracle.remaining // (m + 1))
                if n < 1 or victim.stopped:
                    break  # too poor for a generator step: the student may still play
                generator_step(n)
            for _ in range(self.student_steps):
                n = min(self.batch_size, oracle.remaining)
                if n < 1 or victim.stopped:
                    break
                student_step(n)
        if self.replay_steps and len(replay):
            steps_per_epoch = -(-len(replay) // self.batch_size)
            epochs = min(-(-self.replay_steps // steps_per_epoch), REPLAY_MAX_EPOCHS)
            recipe = TrainRecipe(epochs=epochs, lr=self.lr, batch_size=self.batch_size)
            knowledge.fit(student, *replay.everything(), recipe, seed=seed, loss_fn=F.l1_loss)
        return student


class VictimLogits:
    """Queries the oracle and turns its probability rows into DFME's approximate logits."""

    def __init__(self, oracle: Oracle, floor: float) -> None:
        self.oracle = oracle
        self.floor = floor
        self.stopped = False  # the victim refused (a detector) or the ledger ran dry: stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """Mean-centred ``log p`` for ``x`` (on ``x``'s device; the oracle is asked on the CPU);
        ``None`` once the victim refuses to answer."""
        try:
            answers = self.oracle.query_all(x.cpu()).to(x.device)
        except (QueryRefused, BudgetExhausted):
            self.stopped = True
            return None
        logits = torch.log(answers.clamp_min(self.floor))
        return logits - logits.mean(dim=1, keepdim=True)


class ReplayBuffer:
    """Every image queried so far (unperturbed ones) with the victim's approximate logits."""

    def __init__(self) -> None:
        self.x: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self._cat: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return sum(int(x.shape[0]) for x in self.x)

    def add(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        self.x.append(x.detach().clone())
        self.targets.append(targets.detach().clone())
        self._cat = None

    def everything(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cat is None:
            self._cat = torch.cat(self.x), torch.cat(self.targets)
        return self._cat


def build_generator(input_shape: tuple[int, ...], latent_dim: int, width: int) -> nn.Module:
    """DCGAN-style generator (as in DFAD/DFME), ``width`` channels; returns pre-tanh images."""
    if len(input_shape) != 3:
        raise InvalidParameters(
            f"dfme generates images [C, H, W], not inputs of shape {input_shape}"
        )
    channels, height, width_px = input_shape
    h0, w0 = -(-height // 4), -(-width_px // 4)
    half = (-(-height // 2), -(-width_px // 2))
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * width * h0 * w0),
        nn.Unflatten(1, (2 * width, h0, w0)),
        nn.BatchNorm2d(2 * width),
        nn.Upsample(size=half),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Upsample(size=(height, width_px)),
        nn.Conv2d(2 * width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, channels, 3, padding=1),
        nn.BatchNorm2d(channels, affine=False),
    )
