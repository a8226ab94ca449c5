"""Knockoff Nets (Orekondy et al., CVPR 2019): random and adaptive transfer-set construction.

``policy: random`` samples the budget's worth of images uniformly from the attacker's pool,
queries the victim, and trains the substitute on the returned probability vectors (soft labels).

``policy: adaptive`` is the paper's gradient-bandit sampler. The pool is split into ``actions``
groups; the paper uses the attacker's own class labels (e.g. ImageNet synsets), our pool is
unlabeled, so the groups are k-means clusters of the pool images. Each step draws a group from
the softmax of the preferences ``H``, queries ``step_batch`` of its images, and scores the answers
with the reward(s) chosen: *certainty* (margin of the top two probabilities), *diversity* (how far
the answers rise above their recent mean) and *loss* (the online substitute's cross-entropy on
them). Each reward is standardised by its running statistics, the sum against a running baseline
moves ``H`` (the gradient-bandit update), and the substitute takes one step on every batch so the
loss reward follows what it has learned. The final substitute is trained from scratch on every
answer, as in the random policy.

Every reward is finite by construction: probabilities are clamped before logs, and a zero
running spread standardises to zero, so saturated (one-hot) or constant answers cannot produce
inf or NaN. Against a label-only oracle the rows are one-hot and both policies degrade to
training on labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents._transfer import TransferSetAttack, query_random_subset
from arena.attacker import ATTACKS
from arena.errors import QueryRefused
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.seeds import torch_seed
from arena.validation import check_choice, check_integer, check_number

REWARDS = ("certainty", "diversity", "loss", "all")
_FLOOR = 1e-12


@ATTACKS.register("knockoff", version=2)
@dataclass(frozen=True)
class Knockoff(TransferSetAttack):
    """Knockoff Nets: pool images (random or bandit-chosen), trained on returned probabilities."""

    policy: Literal["random", "adaptive"] = "random"
    """``random``: uniform draws from the pool; ``adaptive``: the gradient-bandit sampler"""
    reward: Literal["certainty", "diversity", "loss", "all"] = "all"
    """adaptive policy: which reward drives the bandit (``all`` = their standardised sum)"""
    actions: int = 10
    """adaptive policy: groups (k-means clusters) the pool is split into"""
    step_batch: int = 32
    """adaptive policy: images queried per bandit step"""
    bandit_lr: float = 0.1
    """adaptive policy: step size of the preference update"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("policy", self.policy, ("random", "adaptive"))
        check_choice("reward", self.reward, REWARDS)
        check_integer("actions", self.actions, low=1)
        check_integer("step_batch", self.step_batch, low=1)
        check_number("bandit_lr", self.bandit_lr, low=0, high=10, low_open=True)

    def targets(self, answers: torch.Tensor) -> torch.Tensor:
        return answers

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        assert knowledge.pool is not None
        if self.policy == "random":
            queries, answers = query_random_subset(oracle, knowledge.pool, rng, self.query_batch)
        else:
            queries, answers = self._adaptive_transfer_set(oracle, knowledge, rng)
        return self.fit_substitute(knowledge, queries, answers, torch_seed(rng), self.targets)

    def _adaptive_transfer_set(
        self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert knowledge.pool is not None
        pool = knowledge.pool
        groups = cluster_pool(pool, self.actions, torch_seed(rng))
        unused = [list(rng.permutation(g)) for g in groups]
        seed = torch_seed(rng)
        online = knowledge.make_substitute(seed)
        optimizer = torch.optim.Adam(online.parameters(), lr=self.lr)
        bandit = GradientBandit(len(groups), self.bandit_lr)
        stats = RunningRewards()
        recent: list[torch.Tensor] = []
        queries: list[torch.Tensor] = []
        answers: list[torch.Tensor] = []
        while oracle.remaining > 0:
            available = np.array([len(u) > 0 for u in unused])
            if not available.any():  # the pool is spent: start over on fresh orders
                unused = [list(rng.permutation(g)) for g in groups]
                available = np.ones(len(groups), dtype=bool)
            action = bandit.draw(rng, available)
            take = min(self.step_batch, oracle.remaining, len(unused[action]))
            chosen, unused[action] = unused[action][:take], unused[action][take:]
            x = pool[torch.as_tensor(np.asarray(chosen, dtype=np.int64))]
            try:
                y = oracle.query(x)
            except QueryRefused:
                break
            # the online model computes on the thief's device; rewards and the transfer set
            # stay on the CPU (no-ops there)
            xd, yd = x.to(knowledge.device), y.to(knowledge.device)
            with torch.no_grad():
                logits = online(xd).cpu()
            raw = batch_rewards(y, logits, recent)
            bandit.update(action, stats.score(raw, self.reward))
            recent = [*recent[-9:], y.mean(dim=0)]
            online.train()
            loss = -(yd * F.log_softmax(online(xd), dim=1)).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            queries.append(x)
            answers.append(y)
        if not queries:
            empty = torch.empty(0, *knowledge.input_shape)
            return empty, torch.empty(0, knowledge.num_classes)
        return torch.cat(queries), torch.cat(answers)


def cluster_pool(pool: torch.Tensor, count: int, seed: int) -> list[np.ndarray]:
    """Pool indices split into ``count`` non-empty k-means clusters of 8×8-pooled images."""
    # imported here: scikit-learn costs every process that imports the attacks (the CLI, each
    # Ray worker) about half a second of CPU, and only the adaptive sampler clusters
    from sklearn.cluster import KMeans

    small = F.adaptive_avg_pool2d(pool, (8, 8)) if pool.dim() == 4 else pool
    features = small.reshape(len(pool), -1).numpy()
    count = min(count, len(pool))
    labels = KMeans(n_clusters=count, n_init=1, random_state=seed).fit_predict(features)
    groups = [np.flatnonzero(labels == k) for k in range(count)]
    return [g for g in groups if len(g)]


def batch_rewards(
    answers: torch.Tensor, substitute_logits: torch.Tensor, recent_means: list[torch.Tensor]
) -> dict[str, float]:
    """The three Knockoff rewards of one answered batch, each a finite float."""
    top2 = answers.topk(min(2, answers.shape[1]), dim=1).values
    margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
    if recent_means:
        baseline = torch.stack(recent_means).mean(dim=0)
        diversity = (answers.mean(dim=0) - baseline).clamp_min(0).sum()
    else:
        diversity = torch.tensor(0.0)
    log_q = F.log_softmax(substitute_logits.clamp(-1e4, 1e4), dim=1).clamp_min(np.log(_FLOOR))
    loss = -(answers * log_q).sum(dim=1).mean()
    rewards = {"certainty": margin.mean(), "diversity": diversity, "loss": loss}
    return {
        name: float(torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0))
        for name, value in rewards.items()
    }


class RunningRewards:
    """Standardises each reward by its running mean and spread (Welford); zero spread gives 0."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, float] = {}
        self.m2: dict[str, float] = {}

    def score(self, raw: dict[str, float], which: str) -> float:
        self.count += 1
        scored = {}
        for name, value in raw.items():
            mean = self.mean.get(name, 0.0)
            delta = value - mean
            mean += delta / self.count
            m2 = self.m2.get(name, 0.0) + delta * (value - mean)
            self.mean[name], self.m2[name] = mean, m2
            spread = (m2 / self.count) ** 0.5
            scored[name] = (value - mean) / spread if spread > 1e-9 else 0.0
        return sum(scored.values()) if which == "all" else scored[which]


class GradientBandit:
    """Softmax preferences over actions with a running-mean reward baseline (Sutton & Barto)."""

    def __init__(self, actions: int, lr: float) -> None:
        self.preferences = np.zeros(actions)
        self.lr = lr
        self.baseline = 0.0
        self.steps = 0
        self.last_policy = np.full(actions, 1.0 / actions)

    def policy(self, available: np.ndarray) -> np.ndarray:
        logits = np.where(available, self.preferences, -np.inf)
        weights = np.exp(logits - logits[available].max())
        return np.asarray(weights / weights.sum())

    def draw(self, rng: np.random.Generator, available: np.ndarray) -> int:
        self.last_policy = self.policy(available)
        return int(rng.choice(len(self.preferences), p=self.last_policy))

    def update(self, action: int, reward: float) -> None:
        self.steps += 1
        advantage = reward - self.baseline
        self.baseline += advantage / self.steps
        onehot = np.zeros_like(self.preferences)
        onehot[action] = 1.0
        self.preferences += self.lr * advantage * (onehot - self.last_policy)
        # keep preferences bounded so the softmax never overflows
        self.preferences = np.clip(self.preferences - self.preferences.max(), -50.0, 0.0)
