"""The strongest-adversary rule (DESIGN §1, §6), defined once for the leaderboard and tuning.

A defense is judged by the API attack that stole the most from it: protection is one minus that
stolen accuracy. Upper-bound baselines (true labels) are reference points, not threat models, and
privileged threat models (``model_access``, ``data_access``: the thief holds the victim's weights
or its training data) are not API adversaries, so neither is ever the adversary unless nothing
else was played.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from arena.knowledge import API
from arena.record import MatchResult


@dataclass(frozen=True)
class Threat:
    """One candidate adversary: an attack at a budget, its matches, and the stolen accuracy it
    stands for (their mean)."""

    attack: str
    budget: int
    results: tuple[MatchResult, ...]
    stolen_accuracy: float


def api_adversary(result: MatchResult) -> bool:
    """Whether a match's attack may be a defense's strongest adversary: a real threat model
    (not an upper bound) reaching the victim only through its API."""
    return not result.upper_bound and result.threat_model == API


def _attack(result: MatchResult) -> str:
    return result.attack


def threats(
    results: Sequence[MatchResult],
    label: Callable[[MatchResult], str] = _attack,
    *,
    per_match: bool = False,
) -> list[Threat]:
    """The candidate adversaries among ``results``, in the order first seen.

    By default the matches of one attack (as ``label`` names it) and budget are one candidate,
    their seeds averaged: the leaderboard's cells. ``per_match``: every match is a candidate of
    its own, its stolen accuracy as recorded: a tuning trial, whose matches share one budget and
    seed and whose attacks are told apart by match, not by label.
    """
    real = [r for r in results if api_adversary(r)] or list(results)
    if per_match:
        return [Threat(label(r), r.budget, (r,), r.stolen_accuracy) for r in real]
    cells: dict[tuple[str, int], list[MatchResult]] = defaultdict(list)
    for r in real:
        cells[(label(r), r.budget)].append(r)
    return [
        Threat(attack, budget, tuple(rs), statistics.fmean([r.stolen_accuracy for r in rs]))
        for (attack, budget), rs in cells.items()
    ]


def strongest(candidates: Sequence[Threat]) -> Threat:
    """The candidate that stole the most; a tie goes to the smaller budget (the cheaper attack),
    then to the one seen first."""
    return max(candidates, key=lambda t: (t.stolen_accuracy, -t.budget))
