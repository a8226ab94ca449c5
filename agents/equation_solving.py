"""Equation-solving extraction of softmax regression (Tramèr et al., USENIX Security 2016, §4.1).

A softmax-regression victim answers ``p = softmax(W x + b)``. For any two classes ``c`` and ``r``
the log-odds are linear in the input::

    log(p_c / p_r) = (w_c - w_r) · x + (b_c - b_r)

so every answered query gives up to ``k - 1`` linear equations in the ``k·(d + 1)`` unknowns,
which are determined only up to the softmax's shift invariance (adding one vector to every
class's parameters changes no answer). The attack

1. queries uniform random inputs from the public input range (by default ``(d + 1)·k`` of them,
   as many as there are unknowns, which is what the paper spends on its softmax targets; capped
   by the remaining budget),
2. picks as reference ``r`` the class whose probability is positive in the most answers and
   solves, class by class, the float64 least-squares system for ``θ_c - θ_r`` (``θ = [w, b]``)
   on the answers where both probabilities are positive; a class that shares too few positive
   answers with the reference is solved against an already solved class it shares enough with,
3. removes the shift by centring the parameters over the classes and returns them as a
   ``softmax_regression`` module.

Against exact probabilities this recovers the victim to float32 precision (fidelity 1). Zeros
carry no equation: rounding, top-k and label-only answers leave some classes with fewer than
``d + 1`` usable equations, and then the attack falls back to the paper's retraining on the same
answers: a softmax regression fitted to the returned rows by minimising the convex cross-entropy
(full-batch L-BFGS, a small L2 penalty keeping it finite on separable labels); for one-hot rows
this is training on labels. Rounded probabilities are only exact to the last decimal kept, so
their log-odds are noisy, most of all for small probabilities: the solved parameters, and with
them the stolen model, degrade — the paper's rounding countermeasure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.attacker import ATTACKS, Attacker
from arena.knowledge import Knowledge
from arena.models import build_model
from arena.oracle import InputSpec, Oracle
from arena.seeds import torch_seed
from arena.validation import check_integer, check_number

SMALLEST_PROBABILITY = float(np.finfo(np.float32).tiny)
"""answers below this (float32 subnormals and zeros) carry no usable log-odds"""
MAX_CONDITION = 1e12
"""normal-equation matrices worse conditioned than this count as rank deficient"""


@ATTACKS.register("equation_solving")
@dataclass(frozen=True)
class EquationSolving(Attacker):
    """Tramèr et al. equation solving: recovers softmax-regression weights from log-odds."""

    needs_pool = False
    victim_kind = "softmax_regression"

    queries: int | None = None
    """oracle queries to spend; ``None``: ``(d + 1)·k``, the number of unknowns. Always capped by
    the remaining budget"""
    spread: float = 1.0
    """queries are uniform in ``[low, low + spread·(high - low)]``: 1 is the whole input box (the
    paper). A smaller box keeps the victim's answers away from saturation, so that more of their
    entries survive rounding"""
    query_batch: int = 256
    """inputs per oracle call (also capped by the service's ``max_batch``)"""
    fallback_steps: int = 100
    """L-BFGS iterations of the fallback fit, when too few equations survive the answers' zeros"""
    l2: float = 1e-4
    """fallback fit: penalty on the squared weights added to the mean cross-entropy (keeps the fit
    finite on separable answers, such as labels)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("query_batch", self.query_batch, low=1)
        check_integer("fallback_steps", self.fallback_steps, low=1)
        if self.queries is not None:
            check_integer("queries", self.queries, low=1)
        check_number("l2", self.l2, low=0, high=1e3, high_open=True)
        check_number("spread", self.spread, low=0, high=1, low_open=True)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        spec = oracle.input_spec
        num_classes = oracle.num_classes
        dim = math.prod(spec.shape)
        wanted = self.queries if self.queries is not None else (dim + 1) * num_classes
        n = max(0, min(wanted, oracle.remaining))
        x = uniform_inputs(rng, n, spec, self.spread)
        answers = oracle.query_all(x, self.query_batch, until_refused=True) if n else None
        seed = torch_seed(rng)
        model = build_model("softmax_regression", spec.shape, num_classes, seed=seed)
        if answers is None or len(answers) == 0:
            return model  # nothing answered: the initial weights are all we have
        x = x[: len(answers)]
        theta = solve_log_odds(x.reshape(len(x), -1), answers)
        if theta is not None:
            solved = build_model("softmax_regression", spec.shape, num_classes)
            linear = next(m for m in solved.modules() if isinstance(m, nn.Linear))
            with torch.no_grad():
                linear.weight.copy_(theta[:, :dim])
                linear.bias.copy_(theta[:, dim])
                if bool(torch.isfinite(solved(x)).all()):  # not beyond float32's range
                    return solved
        # too few positive pairs (zeros in the answers): retrain on the answers instead
        return fit_softmax_regression(model, x, answers, self.fallback_steps, self.l2)


def solve_log_odds(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor | None:
    """Softmax-regression parameters ``[k, d + 1]`` (weights, then bias) from answered queries.

    ``x`` is ``[n, d]`` and ``probs`` ``[n, k]``. Only equations whose two probabilities are
    positive are used. Each least-squares system is solved in float64 through its normal
    equations (one Cholesky factorisation per distinct set of usable rows: with exact answers
    all classes share one), which is well conditioned for uniform inputs and runs on torch's
    threads. The result is centred over the classes (the representative of the shift class with
    zero mean). ``None`` when some class cannot be determined or the solution is not finite.
    """
    x, probs = x.double(), probs.double()
    n, dim = x.shape
    num_classes = probs.shape[1]
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    positive = probs >= SMALLEST_PROBABILITY
    log_p = torch.log(torch.where(positive, probs, 1.0))
    theta = torch.zeros(num_classes, dim + 1, dtype=torch.float64)
    reference = int(positive.sum(dim=0).argmax())
    solved = [reference]
    pending = [c for c in range(num_classes) if c != reference]
    factors: dict[bytes, torch.Tensor | None] = {}
    progress = True
    while pending and progress:
        progress = False
        for c in list(pending):
            # against the solved class with which it shares the most positive answers
            count, anchor = max((int((positive[:, c] & positive[:, s]).sum()), s) for s in solved)
            if count < dim + 1:
                continue
            rows = positive[:, c] & positive[:, anchor]
            key = rows.numpy().tobytes()
            if key not in factors:
                factors[key] = _cholesky(design[rows])
            factor = factors[key]
            if factor is None:  # rank deficient
                continue
            target = log_p[rows, c] - log_p[rows, anchor]
            rhs = design[rows].T @ target
            theta[c] = theta[anchor] + torch.cholesky_solve(rhs[:, None], factor)[:, 0]
            solved.append(c)
            pending.remove(c)
            progress = True
    if pending:
        return None
    theta -= theta.mean(dim=0, keepdim=True)
    return theta if bool(torch.isfinite(theta).all()) else None


def _cholesky(design: torch.Tensor) -> torch.Tensor | None:
    """The Cholesky factor of ``design.T @ design``; ``None`` if it is (numerically) singular."""
    result = torch.linalg.cholesky_ex(design.T @ design)
    factor: torch.Tensor = result.L
    if int(result.info) != 0:
        return None
    diagonal = factor.diagonal()
    if float(diagonal.min()) <= MAX_CONDITION**-0.5 * float(diagonal.max()):
        return None
    return factor


def fit_softmax_regression(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, steps: int, l2: float
) -> nn.Module:
    """Fit ``model`` (a softmax regression) to answer rows by full-batch L-BFGS.

    The objective, mean cross-entropy against the rows plus ``l2`` times the squared weights, is
    convex, so a few dozen quasi-Newton steps reach what thousands of mini-batch steps would;
    for one-hot rows it is training on labels.
    """
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    optimizer = torch.optim.LBFGS(
        model.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        log_p = torch.log_softmax(model(x), dim=1)
        loss = -(targets * log_p).sum(dim=1).mean() + l2 * linear.weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    model.train()
    optimizer.step(objective)  # type: ignore[no-untyped-call]
    return model.eval()


def uniform_inputs(
    rng: np.random.Generator, n: int, spec: InputSpec, spread: float = 1.0
) -> torch.Tensor:
    """``n`` inputs uniform in ``[low, low + spread·(high - low)]`` per coordinate, as float32
    that pass the spec's range check."""
    low, high = _float32_within(spec.low, spec.high)
    u = rng.random((n, *spec.shape), dtype=np.float32)
    x = np.clip(low + np.float32(spread) * (high - low) * u, low, high)
    return torch.from_numpy(x)


def _float32_within(low: float, high: float) -> tuple[np.float32, np.float32]:
    """The float32 bounds inside ``[low, high]`` (``float32(0.1)`` is above 0.1, for example)."""
    lo, hi = np.float32(low), np.float32(high)
    if float(lo) < low:
        lo = np.nextafter(lo, np.float32(np.inf))
    if float(hi) > high:
        hi = np.nextafter(hi, np.float32(-np.inf))
    return lo, hi
