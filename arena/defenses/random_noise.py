"""Random noise on the answers, projected back onto the probability simplex.

The simplest output perturbation, and the baseline every perturbation defense is compared with
(Orekondy et al. 2020 and Lee et al. 2019 both report it): ``y + scale * noise``, projected onto
the simplex. ``kind="gaussian"`` adds N(0, 1) per class; ``kind="dirichlet"`` adds
``Dir(concentration) - 1/C``, a zero-sum direction inside the simplex, so less mass is clipped.

The noise is a deterministic function of the query (each row's bytes are hashed into its own
stream): asking the same image again gets the same answer, so a thief cannot average the noise
away by repeating queries, and answering a batch whole or in parts gives identical rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import gammaincinv

from arena.defenses.base import Choice, Defense, FloatRange, ParamSpace, project_to_simplex
from arena.defenses.registry import DEFENSES
from arena.validation import check_choice, check_integer, check_number

KINDS = ("gaussian", "dirichlet")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@DEFENSES.register("random_noise")
@dataclass(frozen=True)
class RandomNoise(Defense):
    """Adds query-keyed Gaussian or Dirichlet noise to the probabilities, then projects."""

    scale: float = 0.1
    """noise magnitude (standard deviation for gaussian, multiplier for dirichlet), >= 0"""
    kind: str = "gaussian"
    """"gaussian" or "dirichlet\""""
    concentration: float = 1.0
    """Dirichlet concentration (> 0); smaller gives spikier noise"""
    seed: int = 0
    """key of the noise streams (a different seed is a different, equally valid defense)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "scale": FloatRange(0.01, 1.0, log=True),
        "kind": Choice(KINDS),
    }

    def __post_init__(self) -> None:
        check_number("scale", self.scale, low=0)
        check_number("concentration", self.concentration, low=0, low_open=True)
        check_choice("kind", self.kind, KINDS)
        check_integer("seed", self.seed, low=0)

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        classes = probs.shape[1]
        if self.kind == "gaussian":
            u = row_keyed_uniforms(x, self.seed, 2 * classes)
            # Box-Muller: two uniforms per class give one standard normal
            radius = np.sqrt(-2.0 * np.log(u[:, :classes]))
            noise = radius * np.cos(2.0 * math.pi * u[:, classes:])
        else:
            u = row_keyed_uniforms(x, self.seed, classes)
            gamma = gammaincinv(self.concentration, u)  # inverse CDF of Gamma(concentration)
            total = gamma.sum(axis=1, keepdims=True)
            uniform = np.full_like(gamma, 1.0 / classes)
            dirichlet = np.divide(gamma, total, out=uniform, where=total > 0)
            noise = dirichlet - 1.0 / classes
        perturbed = probs + self.scale * torch.from_numpy(noise).to(probs.dtype)
        return project_to_simplex(perturbed)


def row_keyed_uniforms(x: torch.Tensor, seed: int, count: int) -> np.ndarray:
    """``count`` uniforms in (0, 1) per row of ``x``, a deterministic function of the row's bytes
    and ``seed`` (a 64-bit multiply-add hash of the row, then SplitMix64 per output)."""
    rows = x.detach().reshape(len(x), -1).to(torch.float32).cpu().numpy()
    words = np.ascontiguousarray(rows).view(np.uint32).astype(np.uint64)
    weights = np.random.default_rng(seed).integers(1, 2**63, size=words.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        row_hash = (words * (weights | np.uint64(1))).sum(axis=1, dtype=np.uint64)
        counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (row_hash[:, None] + counters[None, :]) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        z = z ^ (z >> np.uint64(31))
    uniforms: np.ndarray = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)
    return uniforms
