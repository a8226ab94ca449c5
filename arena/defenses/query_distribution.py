"""A per-account query-distribution detector in the spirit of D-ADD (Mei, Zhang, Chen, Zhang and
Zhu, "Defense Against Model Stealing Based on Account-Aware Distribution Discrepancy", AAAI 2025;
reference code github.com/AI-EXP-group/D-ADD).

The paper's detector (ADD) models each class of the defender's training data as a multivariate
normal in the victim's feature space (per predicted class: mean and covariance of the training
features). An account's queries are cut into windows; in each window the queries are grouped by
the class the victim predicts, and each group's mean and covariance are compared with the
class's reference by the squared Fréchet distance
``||m - mu||^2 + tr(B) + tr(S) - 2 tr((S^1/2 B S^1/2)^1/2)``. The malicious score of a window is
the count-weighted mean of its classes' distances; a window above a threshold (set from the
distances of benign windows) is flagged. Natural queries from the task's distribution look like
the training data; synthetic queries (JBDA's perturbations, DFME's generator) and queries from
another distribution do not. D-ADD then answers flagged windows with random predictions.

What is built here:

1. ``prepare``: the victim's probabilities on its own training split (``context.train``, the
   defender's data). The feature of a query is its *centred log-probability* row
   ``log p - mean(log p)`` (probabilities floored at 1e-6): the logits up to their softmax-
   invariant shift, i.e. everything the victim's answer says about the query. Per predicted
   class: mean, covariance (population, as the reference code) and the covariance's symmetric
   square root; a class the victim predicts for fewer than two training images uses the pooled
   statistics of all of them.
2. Calibration: ``CALIBRATION_WINDOWS`` benign windows of ``window`` training rows (drawn with
   replacement, keyed by ``context.seed``) give the score distribution of benign traffic. A
   caller is tested once per ``window`` queries, so over a ``horizon`` of queries a benign caller
   faces ``K = ceil(horizon / window)`` tests; each window's threshold is the benign score
   quantile at ``(1 - fpr)^(1/K)``, so a benign caller is flagged within ``horizon`` queries with
   probability about ``fpr``. That quantile is far in the tail (about 6e-5 for the defaults), so
   it is extrapolated: above the 98th percentile the benign scores are fitted by an exponential
   tail (peaks over threshold, the mean excess as the scale).
3. Per account (``new_state``): the features of the queries since the last complete window.
   Every complete window (queries 1..w, w+1..2w, ...: the same windows whatever the batching) is
   scored, all windows completed by a batch in one vectorised call; the first window above the
   threshold flags the caller after the query that completed it, so ``detected_after`` is exact
   and the state rebuilds identically when the service replays the answered batches. What
   follows a flag is the arena's shared rule (:mod:`arena.defenses.detection`): ``flag``,
   ``refuse`` or ``misinformation``.

The Fréchet trace term needs ``tr((S^1/2 B S^1/2)^1/2)``: with ``S^1/2`` precomputed per class it
is the sum of square roots of the eigenvalues of one symmetric C x C matrix per class and
window, batched over windows (``torch.linalg.eigvalsh``); each class's rows are gathered out of
the windows first, so the work scales with the window, not with window x classes. Measured on
one (shared) CPU thread, 10 classes: about 40 ms per batch of 1000 queries; calibration
(8000 windows) about 2-3 s.

Parameters and departures from the paper:

- Features: the paper uses the victim's penultimate-layer features (e.g. 512-d for its MNIST
  conv net). Here the C centred log-probabilities: ``respond`` already has them (penultimate
  features would need a second forward pass per batch and an architecture hook, and the arena
  serves bring-your-own architectures), and C x C square roots keep the detector far cheaper
  than the model. Less information than a 512-d embedding: shifts that leave the victim's
  output distribution unchanged are invisible.
- Window: the paper uses 16 for MNIST / Fashion-MNIST / CIFAR-10 (thresholds 2247 / 650 / 11.6 on
  its features) and answers each flagged window with noise, re-testing every window. The arena
  flags an account once and for all, so the benign false-positive rate is per account over a
  ``horizon`` (the paper reports a per-window "detected malicious rate"); windows of 16 need a
  threshold so far in the tail that little is caught. ``window`` = 64 by default.
- Threshold: the paper picks a fixed number per dataset from the distances of benign windows;
  here it is calibrated from the defender's training data at the target ``fpr``.
- Response: D-ADD's random prediction poisoning is not built; the arena's ``misinformation``
  (wrong top-1 labels after the flag) or ``refuse`` take its place.
- Caveats: the reference is the victim on its *training* images, which it fits better than
  unseen ones, so benign callers with unseen images score a little higher than calibration
  assumes. A thief whose pool comes from the task's own distribution (knockoff on the pool split)
  is, by design, indistinguishable from a benign caller and should not be flagged more often.
  The detector reads the probabilities handed to it: place it first in a chain (an earlier
  output perturbation would shift every caller's features). Calibration costs O(C^3) per class
  and window: fine for 10 classes, slow for 100.

Measured once (Fashion-MNIST, the arena's 15-epoch LeNet-5, defaults: window 64, fpr 0.01 over
10k queries; ``play_match`` at a 5k budget, seed 0, response ``flag``): threshold 21.1; DFME
flagged after 64 queries (its first window), JBDA after 768 (once its first synthetic rounds
fill a window), knockoff on the pool split not flagged, and the benign caller beside each of
them not flagged. Window scores of 10k queries: test images median 12.7 (max 18.2), pool split
12.4 (max 20.1), training images 12.3 (max 18.3), uniform noise 79.5. In the four-axes
tournament (``configs/protection_axes.yaml``, seed 0, response ``refuse``) it flagged JBDA after
896 queries but also 6 of its 20 benign callers (four per match, at batches of 16, 64 and 256,
one of them streaming only the test images nearest the class boundaries), far above the 1 %
target: calibration on i.i.d. training windows does not hold for every honest stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from arena.defenses.base import Choice, Defense, FloatRange, IntRange, ParamSpace
from arena.defenses.detection import RESPONSES, refusal_after_flag, respond_after_flag
from arena.defenses.preparation import PrepareContext
from arena.defenses.registry import DEFENSES
from arena.training import predict_probs
from arena.validation import check_choice, check_integer, check_number

FLOOR = 1e-6
"""probabilities are floored here before the logarithm (one-hot rows stay finite)"""
CALIBRATION_WINDOWS = 8_000
"""benign windows scored to calibrate the threshold"""
CHUNK = 2_000
"""windows scored together during calibration (memory stays small)"""
TAIL = 0.02
"""share of the benign scores above which the tail is fitted as exponential"""


def features(probs: torch.Tensor) -> torch.Tensor:
    """Centred log-probabilities in float64: the logits up to the shift softmax ignores."""
    logs = torch.nan_to_num(probs.to(torch.float64), nan=0.0).clamp_min(FLOOR).log()
    return logs - logs.mean(dim=1, keepdim=True)


class Reference(nn.Module):
    """Per-class mean, covariance square root and covariance trace of the defender's features,
    and the calibrated threshold, as buffers (so they live in ``Defense.models``)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(classes, classes, dtype=torch.float64))
        self.register_buffer("root", torch.zeros(classes, classes, classes, dtype=torch.float64))
        self.register_buffer("trace", torch.zeros(classes, dtype=torch.float64))
        self.register_buffer("threshold", torch.tensor(math.inf, dtype=torch.float64))

    def fit(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Class-wise MVN statistics of the training features under the victim's labels."""
        pooled = _moments(feats)
        for c in range(self.get_buffer("trace").numel()):
            rows = feats[labels == c]
            mean, cov = _moments(rows) if len(rows) >= 2 else pooled
            values, vectors = torch.linalg.eigh(cov)
            root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
            self.get_buffer("mean")[c] = mean
            self.get_buffer("root")[c] = root
            self.get_buffer("trace")[c] = cov.diagonal().sum()

    def scores(self, windows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The count-weighted class-wise Fréchet distance of each window (``[W, n, C]``
        features, ``[W, n]`` predicted labels) to the reference: ``[W]``."""
        mean, root, trace = (self.get_buffer(n) for n in ("mean", "root", "trace"))
        total = torch.zeros(len(windows), dtype=torch.float64)
        for c in torch.unique(labels).tolist():
            rows, mask = _class_rows(windows, labels == c)
            count = mask.sum(dim=1)
            k = count.clamp_min(1)[:, None]
            centre = rows.sum(dim=1) / k
            centred = (rows - centre[:, None]) * mask[..., None]
            trace_b = centred.square().sum(dim=(1, 2)) / k[:, 0]
            y = centred @ root[c]
            gram = y.transpose(1, 2) @ y / k[..., None]
            cross = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(dim=1)
            shift = (centre - mean[c]).square().sum(dim=1)
            distance = shift + trace[c] + trace_b - 2 * cross
            total += torch.where(count > 0, count * distance, 0.0)
        return total / windows.shape[1]


def _class_rows(windows: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's rows of one class, gathered to the front and zero-padded to the largest
    count (``[W, m, C]``), with their mask (``[W, m]``, float64): the work per class scales with
    its rows, not the window."""
    order = (~member).to(torch.int8).argsort(dim=1, stable=True)
    width = max(int(member.sum(dim=1).max()), 1)
    picked = order[:, :width]
    mask = member.gather(1, picked).to(torch.float64)
    rows = windows.gather(1, picked[..., None].expand(-1, -1, windows.shape[2]))
    return rows * mask[..., None], mask


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population covariance of ``rows`` (``[N, C]``)."""
    mean = rows.mean(dim=0)
    centred = rows - mean
    return mean, centred.T @ centred / len(rows)


def tail_quantile(scores: torch.Tensor, level: float) -> float:
    """The ``1 - level`` quantile of ``scores``; beyond the empirical ``TAIL`` an exponential
    tail fitted to the excesses over the ``1 - TAIL`` quantile (peaks over threshold)."""
    if level >= TAIL:
        return float(torch.quantile(scores, 1 - level))
    base = float(torch.quantile(scores, 1 - TAIL))
    excess = scores[scores > base] - base
    scale = float(excess.mean()) if len(excess) else 0.0
    return base + scale * math.log(TAIL / level)


@dataclass
class QueryDistributionState:
    """One caller's history as the detector sees it: the features and labels of the queries
    since the last complete window, and what the windows so far gave."""

    pending: torch.Tensor | None = None
    pending_labels: torch.Tensor | None = None
    seen: int = 0
    windows: int = 0
    flagged_after: int | None = None
    last_score: float | None = None


@DEFENSES.register("query_distribution")
@dataclass(frozen=True)
class QueryDistribution(Defense):
    """Flags a caller whose windows of queries drift from the defender's data (D-ADD style)."""

    stateful = True
    detector = True

    fpr: float = 0.01
    """target chance that a benign caller (queries from the defender's distribution) is
    flagged within ``horizon`` queries (0 < fpr < 1)"""
    window: int = 64
    """queries per tested window; the first test runs after ``window`` queries (paper: 16)"""
    horizon: int = 10_000
    """queries over which the benign false-positive rate ``fpr`` holds"""
    response: str = "flag"
    """after detection: "flag" (answer as before), "refuse" (refuse later batches uncharged) or
    "misinformation" (answer with a wrong top-1 label)"""

    search_space: ClassVar[dict[str, ParamSpace]] = {
        "fpr": FloatRange(0.001, 0.1, log=True),
        "window": IntRange(16, 256),
        "response": Choice(RESPONSES),
    }

    def __post_init__(self) -> None:
        check_number("fpr", self.fpr, low=0, high=1, low_open=True, high_open=True)
        check_integer("window", self.window, low=2)
        check_integer("horizon", self.horizon, low=1)
        check_choice("response", self.response, RESPONSES)

    def prepare(self, model: nn.Module, context: PrepareContext) -> nn.Module:
        """Fit the reference on the victim's training split and calibrate the threshold on
        benign windows drawn from it; the victim is served as it is."""
        probs = predict_probs(model, context.train.x)
        feats, labels = features(probs), probs.argmax(dim=1)
        reference = Reference(context.num_classes)
        reference.fit(feats, labels)
        benign = self._benign_scores(reference, feats, labels, context.seed)
        tests = math.ceil(self.horizon / self.window)
        level = -math.expm1(math.log1p(-self.fpr) / tests)  # 1 - (1 - fpr)^(1/K), accurately
        reference.get_buffer("threshold").fill_(tail_quantile(benign, level))
        self.models["reference"] = reference.eval()
        return model

    def _benign_scores(
        self, reference: Reference, feats: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> torch.Tensor:
        """Scores of ``CALIBRATION_WINDOWS`` windows of training rows (keyed draws)."""
        generator = torch.Generator().manual_seed(seed)
        scores = []
        for start in range(0, CALIBRATION_WINDOWS, CHUNK):
            size = min(CHUNK, CALIBRATION_WINDOWS - start)
            rows = torch.randint(len(feats), (size, self.window), generator=generator)
            scores.append(reference.scores(feats[rows], labels[rows]))
        return torch.cat(scores)

    @property
    def threshold(self) -> float:
        """The calibrated window threshold (``prepare`` sets it)."""
        return float(self._reference().get_buffer("threshold"))

    def _reference(self) -> Reference:
        reference = self.models.get("reference")
        if not isinstance(reference, Reference):
            raise RuntimeError("query_distribution answers only after prepare()")
        return reference

    def new_state(self) -> QueryDistributionState:
        return QueryDistributionState()

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        assert isinstance(state, QueryDistributionState)
        if state.flagged_after is None:
            self._observe(state, features(probs), probs.argmax(dim=1))
        state.seen += len(probs)
        return respond_after_flag(self.response, probs, state.seen, state.flagged_after)

    def _observe(
        self, state: QueryDistributionState, feats: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Score every window this batch completes; flag at the first one above threshold."""
        reference = self._reference()
        if state.pending is not None and state.pending_labels is not None:
            feats = torch.cat([state.pending, feats])
            labels = torch.cat([state.pending_labels, labels])
        full = len(feats) // self.window
        used = full * self.window
        state.pending, state.pending_labels = feats[used:].clone(), labels[used:].clone()
        if not full:
            return
        windows = feats[:used].reshape(full, self.window, -1)
        scores = reference.scores(windows, labels[:used].reshape(full, self.window))
        over = (scores > float(reference.get_buffer("threshold"))).nonzero()
        if len(over):
            first = int(over[0])
            state.flagged_after = (state.windows + first + 1) * self.window
            state.windows += first + 1
            state.last_score = float(scores[first])
            state.pending = state.pending_labels = None
        else:
            state.windows += full
            state.last_score = float(scores[-1])

    def refusal(self, state: Any) -> str | None:
        assert isinstance(state, QueryDistributionState)
        score = state.last_score
        reason = "query_distribution"
        if score is not None and "reference" in self.models:
            reason += f" (window distance {score:.3g} > {self.threshold:.3g})"
        return refusal_after_flag(self.response, state.flagged_after, reason)

    def detected_after(self, state: Any) -> int | None:
        assert isinstance(state, QueryDistributionState)
        return state.flagged_after
