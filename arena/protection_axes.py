"""Four axes of protection, each against its own strongest adversary (defined once, for the
leaderboard and for tuning).

A defense that cannot *prevent* theft may still protect: by *detecting* the thief's account, by
*attributing* the stolen copy to its source afterwards, or by making extraction *cost* the thief
more than an honest caller. Each axis has its own strongest adversary among the API thieves of
the suite (upper bounds and privileged threat models never count, as for prevention):

- **prevention**: 1 − the stolen accuracy of the thief that stole the most
  (:mod:`arena.strongest`);
- **detection**: the share of a thief's matches in which a detector flagged it (of its accounts,
  for a thief that splits its budget over several), for the thief flagged least often (the
  evader); beside it the false-positive rate on the benign callers that
  shared the service, and the median queries the evader had been answered when flagged;
- **attribution**: the share of a thief's stolen models an ownership verifier claims, for the
  thief claimed least often; beside it the false-claim rate on independent models: the upper-bound
  matches' substitutes (trained on true labels, never on the victim's answers) that were claimed;
- **cost** (proof of work): a thief's work per query relative to the benign callers', for the
  thief that paid least.

Seeds are averaged per attack and budget first, as for the strongest adversary. A defense
*protects on* an axis when its figure clears the bar below; the bars are judgement calls, stated
here once so every table uses the same.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from arena.record import MatchResult
from arena.strongest import Threat, strongest, threats

PREVENTION_MARGIN = 0.05
"""prevention protects when the strongest thief steals at least this much less accuracy than it
does from the undefended victim"""
DETECTION_RATE = 0.9
"""detection protects when every thief is flagged in at least this share of its matches..."""
DETECTION_FALSE_POSITIVES = 0.05
"""... while at most this share of benign callers is flagged"""
ATTRIBUTION_RATE = 0.9
"""attribution protects when every thief's copies are claimed at least this often, and no
independent model is (when any was checked)"""
COST_FACTOR = 10.0
"""cost protects when every thief pays at least this many times a benign caller's work per
query"""

Label = Callable[[MatchResult], str]
AxisName = Literal["prevention", "detection", "attribution", "cost"]
AXIS_NAMES: tuple[AxisName, ...] = ("prevention", "detection", "attribution", "cost")


@dataclass(frozen=True)
class Axis:
    """One axis of one defense: its figure against the axis's strongest adversary."""

    value: float | None
    """the figure (``None``: not measured, e.g. no detector in the chain)"""
    adversary: str = ""
    """the attack (label @budget) that does best against this axis"""
    protects: bool | None = None
    """whether the figure clears the axis's bar (``None``: no bar can be applied)"""
    note: str = ""
    """what stands beside the figure: false positives, queries to detection, false claims"""


@dataclass(frozen=True)
class ProtectionAxes:
    """A defense on all four axes."""

    prevention: Axis
    detection: Axis
    attribution: Axis
    cost: Axis

    def axis(self, name: AxisName) -> Axis:
        """One axis by name."""
        found: Axis = getattr(self, name)
        return found

    def protects_on(self) -> list[str]:
        """The axes whose bar the defense clears."""
        return [name for name in AXIS_NAMES if self.axis(name).protects]


def protection_axes(
    group: Sequence[MatchResult], label: Label, undefended_stolen: float | None = None
) -> ProtectionAxes:
    """The four axes of one defended victim's matches. ``undefended_stolen``: the strongest
    thief's stolen accuracy against the same victim undefended (``None`` when not played), the
    reference prevention is judged against."""
    cells = threats(group, label)  # the API thieves' cells (every cell when none is one)
    return ProtectionAxes(
        prevention=_prevention(cells, undefended_stolen),
        detection=_detection(group, cells),
        attribution=_attribution(group, cells),
        cost=_cost(cells),
    )


def _name(threat: Threat) -> str:
    return f"{threat.attack} @{threat.budget}"


def _prevention(cells: list[Threat], undefended_stolen: float | None) -> Axis:
    top = strongest(cells)
    protects = None
    if undefended_stolen is not None:
        protects = top.stolen_accuracy <= undefended_stolen - PREVENTION_MARGIN
    return Axis(1.0 - top.stolen_accuracy, _name(top), protects)


def _weakest(cells: list[Threat], share: Callable[[Threat], float | None]) -> tuple[Threat, float]:
    """The cell with the lowest measured ``share`` (a tie goes to the larger budget, then the
    first seen: the thief that evades with more queries is the stronger evader)."""
    measured = [(t, v) for t in cells if (v := share(t)) is not None]
    return min(measured, key=lambda tv: (tv[1], -tv[0].budget))


def _detection(group: Sequence[MatchResult], cells: list[Threat]) -> Axis:
    watched = [r for r in group if r.benign_flagged is not None]
    if not watched:
        return Axis(None)

    def rate(t: Threat) -> float | None:
        seen = [r for r in t.results if r.benign_flagged is not None]
        return statistics.fmean(accounts_flagged(r) for r in seen) if seen else None

    evader, tpr = _weakest(cells, rate)
    flagged, callers = benign_flags(watched)
    fpr = flagged / callers
    queries = [r.queries_to_detection for r in evader.results if r.queries_to_detection]
    when = f", flagged after {statistics.median(queries):.0f} queries" if queries else ""
    note = f"benign FPR {flagged}/{callers}{when}"
    protects = tpr >= DETECTION_RATE and fpr <= DETECTION_FALSE_POSITIVES
    return Axis(tpr, _name(evader), protects, note)


def accounts_flagged(result: MatchResult) -> float:
    """The share of a thief's accounts flagged: a thief that splits its budget over several
    accounts is caught only as far as its accounts are (one flagged account of eight leaves it
    seven eighths of its answers)."""
    if result.identities > 1:
        return result.identities_flagged / result.identities
    return float(result.detected)


def benign_flags(group: Sequence[MatchResult]) -> tuple[int, int]:
    """Benign callers flagged, and benign callers that played, over the matches of ``group``
    whose chain detects: the false-positive rate's numerator and denominator."""
    watched = [r for r in group if r.benign_flagged is not None]
    return sum(_flagged_callers(r) for r in watched), sum(max(r.benign_callers, 1) for r in watched)


def _flagged_callers(result: MatchResult) -> int:
    """Benign callers flagged in a match (records from before populations: their one caller)."""
    if result.benign_callers:
        return result.benign_callers_flagged
    return int(bool(result.benign_flagged))


def _attribution(group: Sequence[MatchResult], cells: list[Threat]) -> Axis:
    if not any(r.ownership_verified is not None for r in group):
        return Axis(None)

    def rate(t: Threat) -> float | None:
        checked = [r for r in t.results if r.ownership_verified is not None]
        return statistics.fmean(bool(r.ownership_verified) for r in checked) if checked else None

    thieves = [t for t in cells if not any(r.upper_bound for r in t.results)]
    if not thieves:
        return Axis(None)
    evader, claimed = _weakest(thieves, rate)
    independent = [r for r in group if r.upper_bound and r.ownership_verified is not None]
    false_claims = sum(bool(r.ownership_verified) for r in independent)
    note = (
        f"false claims {false_claims}/{len(independent)} independent models"
        if independent
        else "false claims not measured (no independent model)"
    )
    protects = claimed >= ATTRIBUTION_RATE and false_claims == 0
    return Axis(claimed, _name(evader), protects, note)


def _cost(cells: list[Threat]) -> Axis:
    def ratio(t: Threat) -> float | None:
        paid = [r.work_cost_ratio for r in t.results if r.work_cost_ratio is not None]
        return statistics.fmean(paid) if paid else None

    real = cells
    if not any(ratio(t) is not None for t in real):
        return Axis(None)
    cheapest, factor = _weakest(real, ratio)
    return Axis(factor, _name(cheapest), factor >= COST_FACTOR, "thief / benign work per query")
