"""What one defense setting achieved against a whole attack suite: utility, protection against the
strongest adversary (:mod:`arena.strongest`), an optional cost, and whether it keeps the utility
floor. Pure functions of match records: the tuning loop, the tests and the zoo use them alike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from arena.protection_axes import AxisName, benign_flags, protection_axes
from arena.record import MatchResult
from arena.strongest import strongest, threats
from orchestration.study_storage import StudyError
from orchestration.tune_config import TuneConfig


@dataclass(frozen=True)
class Scores:
    """What one defense setting achieved against the whole suite."""

    utility: float
    protection: float
    """1 - the strongest attacker's stolen accuracy"""
    cost: float | None
    strongest_attack: str
    stolen_accuracy: dict[str, float]
    fidelity: dict[str, float]
    feasible: bool
    """utility within the floor of the undefended victim (and benign false positives within
    their bound, when one is set)"""
    axis: str = "prevention"
    """the axis of protection ``protection`` measures (:mod:`arena.protection_axes`)"""
    false_positive_rate: float | None = None
    """share of the benign callers a detector flagged (``None``: no detector in the chain)"""

    def shortfall(self, max_false_positives: float | None) -> str:
        """Why the setting is infeasible, in words ('' when it is feasible)."""
        if self.feasible:
            return ""
        over = (
            max_false_positives is not None
            and (self.false_positive_rate or 0.0) > max_false_positives + 1e-12
        )
        return "benign false positives above the bound" if over else "below the utility floor"

    def values(self, with_cost: bool) -> list[float]:
        values = [self.utility, self.protection]
        return [*values, self.cost if self.cost is not None else math.nan] if with_cost else values


def score(
    results: Sequence[MatchResult],
    victim_accuracy: float,
    floor: float,
    cost: str | None,
    utility_metric: str = "accuracy",
    axis: AxisName = "prevention",
    max_false_positives: float | None = None,
) -> Scores:
    """Worst case over the suite: protection from the attacker that stole the most.

    Utility is the defended test accuracy, or with ``utility_metric="goodput"`` (model zoos) the
    share of benign requests served within their targets; ``victim_accuracy`` is then the
    undefended baseline of that metric (:func:`utility_baseline`). With another ``axis`` than
    prevention, ``protection`` is that axis's figure against its own strongest adversary (0 where
    the chain does not measure it: a setting that never detects protects nothing on detection);
    ``max_false_positives`` bounds the benign callers' false-positive rate for feasibility."""
    if not results:
        raise ValueError("a trial needs at least one match result")
    stolen = {r.attack: r.stolen_accuracy for r in results}
    top = strongest(threats(results, per_match=True))
    utility = min(_utility(r, utility_metric) for r in results)
    cost_value = None
    if cost == "latency":
        cost_value = max(r.latency_ratio for r in results)
    elif cost == "kl":
        cost_value = max(r.test_perturbation_kl for r in results)
    protection, adversary = 1.0 - top.stolen_accuracy, top.attack
    if axis != "prevention":
        measured = protection_axes(results, _attack).axis(axis)
        protection = 0.0 if measured.value is None else measured.value
        adversary = measured.adversary or adversary
    flagged, callers = benign_flags(results)
    fpr = flagged / callers if callers else None
    quiet = max_false_positives is None or (fpr or 0.0) <= max_false_positives + 1e-12
    return Scores(
        utility=utility,
        protection=protection,
        cost=cost_value,
        strongest_attack=adversary,
        stolen_accuracy=stolen,
        fidelity={r.attack: r.fidelity for r in results},
        feasible=utility >= victim_accuracy - floor - 1e-12 and quiet,
        axis=axis,
        false_positive_rate=fpr,
    )


def _attack(result: MatchResult) -> str:
    return result.attack


def score_trial(
    config: TuneConfig, results: Sequence[MatchResult], victim_accuracy: float, floor: float
) -> Scores:
    """:func:`score` with a study's settings: its cost, utility, axis and false-positive bound."""
    return score(
        results,
        victim_accuracy,
        floor,
        config.cost,
        config.utility,
        config.axis,
        config.max_false_positives,
    )


def _utility(result: MatchResult, metric: str) -> float:
    if metric != "goodput":
        return result.utility
    if result.goodput is None:
        raise StudyError(f"goodput is measured on model zoos only, not on {result.victim_arch}")
    return result.goodput


def utility_baseline(config: TuneConfig, victim_accuracy: float) -> float:
    """The undefended value of the utility objective the floor is measured from: the victim's
    accuracy, or for goodput 1 (an undefended zoo serves every benign request in its targets)."""
    return 1.0 if config.utility == "goodput" else victim_accuracy
