"""Calibrated proof of work (Dziedzic, Kaleem, Lu, Papernot, "Increasing the Cost of Model
Extraction with Calibrated Proof of Work", ICLR 2022): answers are unchanged, but every query
costs the caller CPU time, more for callers whose queries leak more about the model.

The paper estimates, per user, the privacy cost (PATE's data-dependent epsilon) of the queries
answered so far, with a private kNN "teacher ensemble" on the victim's training data, and maps it
to the timing of a hashcash puzzle per query: benign users (in-distribution queries the teachers
agree on) pay about 2x the model's latency, extraction attacks up to ~100x. The reference code
(cleverhans-lab) fits that map from privacy cost to puzzle timing by regression.

Built here: the same protocol with real work (:mod:`arena.work`: sha256 puzzles, nonces from
:mod:`secrets`, checked by the service before a batch is charged) and the same calibration idea
with a cheaper estimate of the information a query leaks: the normalised entropy of the answer,
``H(p) / log C`` in [0, 1]. A PATE vote histogram on confident, in-distribution queries is
peaked (low privacy cost); on out-of-distribution or synthetic queries (Knockoff's other
datasets, JBDA's steps across decision boundaries) the votes split, and so does the victim's
softmax: the answer's entropy is the single-model stand-in for the vote's margin, and costs
nothing (the paper's kNN over the training set per query does not fit the CPU budget of a
tournament). Per caller the state keeps the summed leak and the query count; the difficulty of
the next batch grows linearly in the mean leak, from ``base_bits`` leading zero bits per query
(a fresh caller, or one whose mean stays within the ``allowance`` natural data leaks) to
``max_bits`` once the mean reaches ``saturation``: the cost per query grows as ``2 ** bits``, so
a caller at ``max_bits`` pays ``2 ** (max_bits - base_bits)`` times a benign one's (the paper's
~100x is about 7 bits).

Calibration, as in the paper, against natural in-distribution traffic: under the default
Fashion-MNIST LeNet-5 the mean normalised entropy is 0.078 on the in-distribution attacker pool
(natural images the victim never trained on), 0.11 on the MNIST out-of-distribution pool, 0.17
on JBDA-like steps (seeds plus signed 0.1 steps) and 0.34 on uniform noise. Hence the defaults
``allowance=0.08`` (natural traffic pays ``base_bits``) and ``saturation=0.2`` (synthetic
traffic pays close to ``max_bits``). The paper's puzzles take seconds per query; CPU-bound
tournaments force ``base_bits=4`` and ``max_bits=12`` (about 10 ms a query in Python here).

Departures: the leak estimate is an entropy proxy, not PATE's epsilon; the difficulty is a
function of the mean rather than of a regression fitted to the paper's timings (a caller
cannot dilute its mean cheaply: the benign-looking queries it adds are paid for too). The
state is rebuilt by replaying answered batches, like every detector's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, FloatRange, IntRange, ParamSpace
from arena.defenses.registry import DEFENSES
from arena.validation import check_integer, check_number
from arena.work import MAX_WORK_BITS


@dataclass
class WorkState:
    """One caller's leak estimate: queries answered and their summed normalised entropy."""

    seen: int = 0
    leaked: float = 0.0

    @property
    def mean_leak(self) -> float:
        return self.leaked / self.seen if self.seen else 0.0


@DEFENSES.register("proof_of_work")
@dataclass(frozen=True)
class ProofOfWork(Defense):
    """Answers unchanged; each batch costs a hashcash puzzle calibrated to the caller's leak."""

    preserves_argmax = True
    stateful = True
    requires_work = True

    base_bits: int = 4
    """leading zero bits per query for a caller whose answers leak nothing (2**bits hashes)"""
    max_bits: int = 12
    """the difficulty a caller reaches at ``saturation`` (at most 32)"""
    allowance: float = 0.08
    """mean normalised answer entropy a caller may leak at ``base_bits`` (natural data's)"""
    saturation: float = 0.2
    """mean normalised answer entropy at which ``max_bits`` is reached (allowance < it <= 1)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "max_bits": IntRange(8, 16),
        "allowance": FloatRange(0.0, 0.12),
        "saturation": FloatRange(0.15, 1.0),
    }

    def __post_init__(self) -> None:
        check_integer("base_bits", self.base_bits, low=0, high=MAX_WORK_BITS)
        check_integer("max_bits", self.max_bits, low=self.base_bits, high=MAX_WORK_BITS)
        check_number("allowance", self.allowance, low=0, high=1, high_open=True)
        check_number("saturation", self.saturation, low=self.allowance, high=1, low_open=True)

    def new_state(self) -> WorkState:
        return WorkState()

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        """The answers as they are; the caller's leak grows by their normalised entropy."""
        assert isinstance(state, WorkState)
        state.seen += int(probs.shape[0])
        state.leaked += float(normalised_entropy(probs).double().sum())
        return probs

    def work_bits(self, state: Any, batch: int) -> int:
        """Leading zero bits per query of the caller's next batch (of ``batch`` queries)."""
        assert isinstance(state, WorkState)
        excess = (state.mean_leak - self.allowance) / (self.saturation - self.allowance)
        share = min(1.0, max(0.0, excess))
        return self.base_bits + round((self.max_bits - self.base_bits) * share)


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per row, the entropy of the answer over its maximum ``log C``: 0 certain, 1 uniform."""
    p = probs.double().clamp_min(0.0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)
    return (entropy / math.log(max(int(probs.shape[1]), 2))).clamp(0.0, 1.0)
