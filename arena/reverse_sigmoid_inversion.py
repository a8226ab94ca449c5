"""Undoing the reverse-sigmoid defense from its answers alone (the thief's side of Lee et al. 2019).

The defense answers ``a = alpha * f(y)`` per row, with ``f(y) = y - beta*(sigmoid(gamma*logit
y) - 1/2)`` (``y`` clamped to ``[1e-9, 1 - 1e-9]`` inside the sigmoid, as the defense does) and
``alpha`` rescaling the row to sum to one. Facts the inversion rests on:

- ``f(1 - y) = 1 - f(y)``, and ``f > 0`` on ``y < 1/2``: for ``beta <= 2`` nothing is clipped.
- ``f`` is *not* monotone: it falls on ``(0, y*)`` (``y* ~ (beta*gamma)^(1/(1-gamma))``), rises
  on ``(y*, 1 - y*)`` and falls again near 1. A value has up to three preimages.
- The row scale ``c = 1/alpha`` is unknown, and the only constraint is that the clean row sums
  to one. For every ``(beta, gamma)`` (``beta = 0`` included: the answers taken as they are)
  some rows satisfy it exactly, so *consistency alone cannot identify the parameters*. What
  does is the *range* of ``f``: a reverse-sigmoid row has a floor (no answer below ``f_min/c``)
  and bounded spread, which clean softmax rows violate, and vice versa.

Per row and hypothesis, every coordinate but one (the *remainder* ``k``) is mapped to its
smallest preimage of ``c * a_i`` (a sparsity prior: small probabilities stay small), the
remainder is ``y_k = 1 - sum of the others``, and ``c`` is solved (grid, then bisection) so that
``f(y_k) = c * a_k``. Of the roots over ``k`` and ``c`` the most peaked row (largest ``y_k``) is
kept. A row with no root under the hypothesis is returned unchanged. The hypothesis kept is the
one whose output rows have the lowest mean entropy (minimum-entropy choice among hypotheses, the
identity among them): infeasible hypotheses leave rows unchanged and so never win by accident.

Coordinates the defense clipped to zero (only possible for ``beta > 2``) carry no information:
they are given a small value before solving and the output is renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP = 1e-9
"""the defense's clamp before ``logit``"""
ZERO_ANSWER = 1e-6
"""what a clipped (zero) answer is taken to be"""
BETAS = tuple(float(b) for b in np.geomspace(0.05, 3.0, 7))
"""the coarse grid of ``beta`` (the defense's tuning range, 0.05 to 3)"""
GAMMAS = tuple(float(g) for g in np.geomspace(0.01, 1.0, 6))
"""the coarse grid of ``gamma`` (0.01 to 1)"""
_TABLE = 2048
_GRID = 192
_BISECT = 24
_EDGE = 0.08
"""values this far (relative) below ``min f`` still map to ``y*``: a clean coordinate near
``y*`` puts the row's true scale at the edge of the range, between two grid points"""


def perturbed(y: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    """The defense's map before renormalisation, ``f(y)``."""
    clipped = np.clip(y, CLIP, 1.0 - CLIP)
    logit = np.log(clipped) - np.log1p(-clipped)
    return np.asarray(y - beta * (1.0 / (1.0 + np.exp(-gamma * logit)) - 0.5))


@dataclass(frozen=True)
class Curve:
    """``f`` for one ``(beta, gamma)``, tabulated on its two monotone pieces below ``1 - y*``."""

    beta: float
    gamma: float
    low_v: np.ndarray
    """f on the falling piece ``[CLIP, y*]``, ascending (so ``low_y`` descends)"""
    low_y: np.ndarray
    mid_v: np.ndarray
    """f on the rising piece ``[y*, 1 - y*]``, ascending"""
    mid_y: np.ndarray

    @classmethod
    def build(cls, beta: float, gamma: float) -> Curve:
        half = np.geomspace(CLIP, 0.5, _TABLE)
        y = np.concatenate([half, 1.0 - half[-2::-1]])
        v = perturbed(y, beta, gamma)
        star = int(np.argmin(v[:_TABLE]))
        top = len(y) - 1 - star
        low_y, low_v = y[: star + 1][::-1], v[: star + 1][::-1]
        mid_y, mid_v = y[star : top + 1], np.maximum.accumulate(v[star : top + 1])
        return cls(beta, gamma, low_v, low_y, mid_v, mid_y)

    def smallest_preimage(self, v: np.ndarray) -> np.ndarray:
        """The smallest ``y`` with ``f(y) = v``; NaN where ``v`` is outside the range of ``f``
        (a little below its minimum counts as the minimum, see ``_EDGE``)."""
        low = np.interp(v, self.low_v, self.low_y)
        mid = np.interp(v, self.mid_v, self.mid_y)
        on_low = (v >= self.low_v[0] * (1.0 - _EDGE)) & (v <= self.low_v[-1])
        on_mid = (v > self.low_v[-1]) & (v <= self.mid_v[-1])
        return np.where(on_low, low, np.where(on_mid, mid, np.nan))

    def rows_given(self, answers: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
        """Clean rows implied by ``scale`` (``[G, N]``) with ``k`` the remainder (``[G, N, C]``)."""
        rows = self.smallest_preimage(scale[..., None] * answers)
        rows[..., k] = 0.0
        rows[..., k] = 1.0 - rows.sum(axis=-1)
        return rows

    def residual(self, answers: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
        """``f(y_k) - c*a_k``: zero where the row is consistent; NaN where it cannot be."""
        rows = self.rows_given(answers, scale, k)
        y_k = rows[..., k]
        r = perturbed(y_k, self.beta, self.gamma) - scale * answers[:, k]
        return np.where(np.isfinite(y_k) & (y_k > 0.0) & (y_k < 1.0), r, np.nan)


def _scales(num_classes: int, beta: float) -> np.ndarray:
    """Candidate row scales ``c = sum_j f(y_j)``: ``f`` lies in ``(0, max(1, beta/2) + 1)``."""
    return np.geomspace(1e-3, num_classes * (1.0 + beta) + 1.0, _GRID)


def _root(curve: Curve, answers: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the scale of the most peaked root for remainder ``k`` and its ``y_k`` (NaN: none).

    The residual is tabulated on a log grid of scales; of the brackets where it changes sign the
    one with the largest ``y_k`` is refined by bisection.
    """
    grid = _scales(answers.shape[1], curve.beta)
    scale = np.broadcast_to(grid[:, None], (len(grid), len(answers)))
    r = curve.residual(answers, scale, k)
    change = (r[:-1] * r[1:] <= 0.0) & np.isfinite(r[:-1]) & np.isfinite(r[1:])
    y_k = curve.rows_given(answers, scale, k)[..., k][:-1]
    bracket = np.argmax(np.where(change, y_k, -np.inf), axis=0)
    found = change.any(axis=0)
    lo, hi = grid[bracket][None], grid[bracket + 1][None]
    r_lo = r[bracket, np.arange(len(answers))][None]
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        r_mid = curve.residual(answers, mid, k)
        left = ~np.isfinite(r_mid) | (r_lo * r_mid <= 0.0)
        lo, hi = np.where(left, lo, mid), np.where(left, mid, hi)
        r_lo = np.where(left, r_lo, r_mid)
    root = 0.5 * (lo + hi)
    y_root = curve.rows_given(answers, root, k)[0, :, k]
    ok = found & np.isfinite(y_root) & (y_root > 0.0)
    return np.where(ok, root[0], np.nan), np.where(ok, y_root, np.nan)


def invert_with(answers: np.ndarray, beta: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Clean rows under ``(beta, gamma)`` and which rows were invertible (others unchanged)."""
    a = np.where(answers > 0.0, answers, ZERO_ANSWER)
    curve = Curve.build(beta, gamma)
    best_y = np.full(len(a), -np.inf)
    out = a.copy()
    for k in range(a.shape[1]):
        scale, y_k = _root(curve, a, k)
        better = np.isfinite(y_k) & (y_k > best_y)
        if better.any():
            rows = curve.rows_given(a[better], scale[better][None], k)[0]
            out[better], best_y[better] = rows, y_k[better]
    solved = np.isfinite(best_y)
    out = np.where(solved[:, None], out, answers)
    return tidy(out), solved


def tidy(rows: np.ndarray) -> np.ndarray:
    """Finite, non-negative rows summing to one (a tiny floor keeps every class possible)."""
    rows = np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
    rows = np.clip(rows, 0.0, None) + CLIP
    return np.asarray(rows / rows.sum(axis=1, keepdims=True))


def mean_entropy(rows: np.ndarray) -> float:
    return float(-(rows * np.log(np.clip(rows, 1e-300, None))).sum(axis=1).mean())


@dataclass(frozen=True)
class Estimate:
    """The hypothesis kept: ``beta = 0`` means the answers are taken as they are."""

    beta: float
    gamma: float
    entropy: float

    def invert(self, answers: np.ndarray) -> np.ndarray:
        """Clean rows under this estimate (rows it cannot explain come back unchanged)."""
        if self.beta == 0.0:
            return tidy(answers)
        return invert_with(answers, self.beta, self.gamma)[0]


def _score(answers: np.ndarray, beta: float, gamma: float) -> Estimate:
    return Estimate(beta, gamma, mean_entropy(invert_with(answers, beta, gamma)[0]))


def estimate(answers: np.ndarray) -> Estimate:
    """Grid search over ``(beta, gamma)`` then a finer grid around the best; deterministic.

    The criterion is the mean entropy of the output rows (see the module docstring); the
    identity (``beta = 0``) is the first candidate and wins ties, so answers no hypothesis can
    explain (an undefended victim's) are left alone.
    """
    best = Estimate(0.0, 0.0, mean_entropy(tidy(answers)))
    for beta in BETAS:
        for gamma in GAMMAS:
            best = min(best, _score(answers, beta, gamma), key=lambda e: e.entropy)
    if best.beta == 0.0:
        return best
    step_b = (BETAS[1] / BETAS[0]) ** 0.5
    step_g = (GAMMAS[1] / GAMMAS[0]) ** 0.5
    centre = best
    for fb in (1 / step_b, 1.0, step_b):
        for fg in (1 / step_g, 1.0, step_g):
            if (fb, fg) != (1.0, 1.0):
                candidate = _score(answers, centre.beta * fb, centre.gamma * fg)
                best = min(best, candidate, key=lambda e: e.entropy)
    return best
