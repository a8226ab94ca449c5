"""What one defense setting achieved against a whole attack suite: utility, protection against the
strongest adversary (:mod:`arena.strongest`), an optional cost, and whether it keeps the utility
floor. Pure functions of match records: the tuning loop, the tests and the zoo use them alike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """utility within the floor of the undefended victim"""

    def values(self, with_cost: bool) -> list[float]:
        values = [self.utility, self.protection]
        return [*values, self.cost if self.cost is not None else math.nan] if with_cost else values


def score(
    results: Sequence[MatchResult],
    victim_accuracy: float,
    floor: float,
    cost: str | None,
    utility_metric: str = "accuracy",
) -> Scores:
    """Worst case over the suite: protection from the attacker that stole the most.

    Utility is the defended test accuracy, or with ``utility_metric="goodput"`` (model zoos) the
    share of benign requests served within their targets; ``victim_accuracy`` is then the
    undefended baseline of that metric (:func:`utility_baseline`)."""
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
    return Scores(
        utility=utility,
        protection=1.0 - top.stolen_accuracy,
        cost=cost_value,
        strongest_attack=top.attack,
        stolen_accuracy=stolen,
        fidelity={r.attack: r.fidelity for r in results},
        feasible=utility >= victim_accuracy - floor - 1e-12,
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
