"""Path-finding extraction of decision trees (Tramèr et al., USENIX Security 2016, §4.2).

A decision-tree API that returns, with each label, a confidence identifying the leaf reached (as
BigML does, and as :mod:`arena.trees` victims do) leaks the tree: a leaf's region is a *box*,
the conjunction of the predicates ``x_f <= t`` / ``x_f > t`` on its path, and whether a query
stays in a leaf is visible in the answer. The attack

1. queries a few uniform random inputs and takes each new answer row as a leaf identity, with
   the input as that leaf's *witness*;
2. explores a leaf from its witness ``w``, per side (lower and upper) of every feature:
   a bound exists on feature ``f`` iff moving ``w_f`` to the input range's end leaves the leaf.
   Because a box is a product of intervals, moving *many* features to their end at once stays in
   the leaf iff none of them is bounded on that side, so the bounded features are found by
   adaptive group testing (test a group; in a group that leaves the leaf, test the first half,
   and the second only if the first leaves too), about ``1.5 log2(d)`` queries per bounded
   feature instead of one per feature. Each bound is then
   line-searched until its bracket — a value answered inside the leaf and one answered
   outside — is at most ``tolerance`` wide; the threshold estimate is its middle. The search
   first tries the thresholds already found on that feature (both ends of a known bracket: two
   queries), then bisects. With the default ``tolerance=0`` it bisects until the two values are
   adjacent float32 numbers, which fixes the side of every float32 input: thresholds can sit
   exactly on a data value (scikit-learn puts them half-way between two training values, which
   can be a value that only test images have), so any coarser tolerance can misplace real inputs;
3. explores new leaves by *crossing* every bound found: the witness with ``w_f`` set to the
   bracket's outside value lies (already answered) in the neighbouring leaf across that
   predicate. Crossing every bound of every explored leaf reaches every leaf of the tree (each
   subtree's leaves border its sibling's across the subtree's root predicate). A crossed-into
   leaf inherits two things from the leaf it was crossed from: the crossed predicate, free, and
   the other predicates as *hints*, each checked with two queries at the old bracket (leaves that
   share an ancestor share its predicate), before group testing the remaining features;
4. stops when every leaf found is explored or the budget cannot pay for the next step, and
   returns a :class:`~agents._leaf_boxes.BoxLookup`: the input's box answers (nearest box by L1
   violation outside all of them).

Queries from all leaves being explored are batched together (up to the input spec's
``max_batch`` per call), and a step whose queries do not fit in ``oracle.remaining`` is never
sent: that leaf is kept as an answered point only. When the budget runs short, what remains of
it is spent on uniform probes, each kept as an answered point.

**When leaf identities fail.** Two leaves with the same class counts give the same answer (see
:mod:`arena.trees`). The attack then tells them apart by geometry: a point with a known answer
is a new leaf unless an explored box with that answer contains it, and while exploring a leaf,
points inside *another* explored box with the same answer count as outside. A probe landing in
a colliding leaf that is not explored yet is taken for the leaf being explored, which can drop a
bound and let a box overlap its neighbours; colliding leaves share their label, so this costs
agreement only where the overlap meets leaves of other labels. Against label-only answers
(one-hot rows) every leaf of a class looks alike; the same rules then explore label regions as
if they were boxes: the attack runs within its budget, but its boxes are only approximate
(Tramèr et al. extract label-only trees differently, top-down with incomplete queries). An
answer perturbed by random noise identifies no leaf at all: every query looks like a new leaf
and the budget goes on exploring them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from agents._leaf_boxes import LOWER, UPPER, Bound, BoxIndex, BoxLookup, Leaf, answer_key
from arena.attacker import ATTACKS, Attacker
from arena.errors import BudgetExhausted, QueryRefused
from arena.knowledge import Knowledge
from arena.oracle import InputSpec, Oracle
from arena.validation import check_integer, check_number

Exploration = Generator[np.ndarray, np.ndarray, tuple[list[Bound], list["Candidate"]]]
"""yields query points ``[m, d]``, is sent their answers ``[m, C]``, returns bounds and exits"""
InsideTest = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``inside(points, answers) -> bool [m]``: which answered points are in the leaf explored"""


@ATTACKS.register("path_finding")
@dataclass(frozen=True)
class PathFinding(Attacker):
    """Tramèr et al. path finding: rebuilds a tree's leaf boxes from leaf-identifying answers."""

    needs_pool = False
    victim_kind = "decision_tree"

    tolerance: float = 0.0
    """width, as a fraction of the input range, at which a threshold's search stops (the
    estimate is then within half of it); 0: exact, down to adjacent float32 values (about 25
    bisection steps instead of 10 for 1e-3, but no input can land on the wrong side)"""
    start_points: int = 8
    """uniform random inputs queried first to find leaves to start from (one is enough in
    theory: crossing bounds reaches every leaf)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("tolerance", self.tolerance, low=0, high=1, high_open=True)
        check_integer("start_points", self.start_points, low=1, high=4096)

    def _steal(self, oracle: Oracle, knowledge: Knowledge, rng: np.random.Generator) -> nn.Module:
        spec = oracle.input_spec
        dim = math.prod(spec.shape)
        search = _Search(oracle, self.tolerance * (spec.high - spec.low), BoxIndex(dim))
        starts = uniform_points(rng, min(self.start_points, oracle.remaining), dim, spec)
        answers = search.ask(starts) if len(starts) else None
        if answers is not None:
            search.explore_all([Candidate(p, a) for p, a in zip(starts, answers, strict=True)])
        if search.cut and not search.refused and oracle.remaining > 0:
            probes = uniform_points(rng, oracle.remaining, dim, spec)
            answered = search.ask(probes)
            if answered is not None:
                search.add_points([Candidate(p, a) for p, a in zip(probes, answered, strict=True)])
        return BoxLookup(search.leaves, dim, oracle.num_classes)


def uniform_points(rng: np.random.Generator, n: int, dim: int, spec: InputSpec) -> np.ndarray:
    """``n`` flattened inputs drawn uniformly from the input range, as float32."""
    return rng.uniform(spec.low, spec.high, size=(n, dim)).astype(np.float32)


@dataclass(frozen=True)
class Candidate:
    """An answered input that may lie in a leaf not explored yet."""

    point: np.ndarray
    answer: np.ndarray
    known: Bound | None = None
    """the predicate crossed to reach it (already bracketed, seen from this side)"""
    hints: tuple[Bound, ...] = ()
    """the other predicates of the leaf it was crossed from"""

    @property
    def key(self) -> bytes:
        return answer_key(self.answer)


@dataclass
class _Search:
    """The attack's state: the oracle, the leaves found, and the batching of their explorations."""

    oracle: Oracle
    tolerance: float
    boxes: BoxIndex
    """the explored leaves' boxes"""
    leaves: list[Leaf] = field(default_factory=list)
    cut: bool = False
    """the budget (or a detector) stopped the search before every leaf was explored"""
    refused: bool = False
    """a query was refused (by a detector, or over budget): nothing more is sent"""
    thresholds: ThresholdTable = field(default_factory=lambda: ThresholdTable())
    """every threshold bracket found so far"""
    explored: int = 0
    """leaves explored to the end"""
    exploring_queries: int = 0
    """queries spent exploring leaves (to estimate a leaf's cost)"""

    def ask(self, points: np.ndarray) -> np.ndarray | None:
        """Answers for flattened ``points`` (``max_batch`` per call); ``None`` once refused."""
        x = torch.from_numpy(points).reshape(len(points), *self.oracle.input_spec.shape)
        try:
            return self.oracle.query_all(x).numpy()
        except (QueryRefused, BudgetExhausted):
            self.cut = self.refused = True
            return None

    def explore_all(self, candidates: list[Candidate]) -> None:
        """Explore waves of leaves until none is left or the budget is spent; keep the
        candidates left unexplored as point leaves."""
        while candidates and not self.cut:
            wave, candidates = self._select(candidates, self._wave_width())
            if not wave:
                break
            for candidate, result in zip(wave, self._run(wave), strict=True):
                if result is None:  # cut short: the witness is all we keep of it
                    self.leaves.append(Leaf(candidate.answer, candidate.point, None))
                    continue
                self.explored += 1
                bounds, exits = result
                self.leaves.append(Leaf(candidate.answer, candidate.point, tuple(bounds)))
                self.boxes.add(candidate.key, bounds)
                candidates.extend(exits)
        self.add_points(candidates)

    def add_points(self, candidates: Sequence[Candidate]) -> None:
        """Keep answered inputs that no explored box explains as point leaves."""
        for candidate in candidates:
            point = candidate.point[None]
            if not self.boxes.covered(candidate.key, point, 2 * self.tolerance)[0]:
                self.leaves.append(Leaf(candidate.answer, candidate.point, None))

    def _wave_width(self) -> int:
        """How many leaves to explore at once: one until a leaf's cost is known, then as many
        as half the remaining budget pays for at the mean cost so far, so that when the budget
        runs short few explorations are left half done (a half-explored leaf is lost)."""
        if not self.explored:
            return 1
        cost = self.exploring_queries / self.explored
        return max(1, int(self.oracle.remaining / (2 * cost)))

    def _select(
        self, candidates: list[Candidate], width: int
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The next wave: up to ``width`` uncovered candidates, one per answer; the rest wait
        (two inputs with one answer are one leaf unless the first one's box leaves the other
        out), and candidates inside an explored box of their answer are dropped."""
        wave: list[Candidate] = []
        later: list[Candidate] = []
        keys: set[bytes] = set()
        margin = 2 * self.tolerance  # a crossing point lies within the tolerance of its box
        for candidate in candidates:
            if self.boxes.covered(candidate.key, candidate.point[None], margin)[0]:
                continue
            if candidate.key in keys or len(wave) >= width:
                later.append(candidate)
            else:
                keys.add(candidate.key)
                wave.append(candidate)
        return wave, later

    def _inside_test(self, key: bytes) -> InsideTest:
        def inside(points: np.ndarray, answers: np.ndarray) -> np.ndarray:
            same = np.array([answer_key(a) == key for a in answers], dtype=bool)
            if same.any():  # a point in another explored box with this answer is not ours
                same[same] &= ~self.boxes.covered(key, points[same], 0.0)
            return same

        return inside

    def _run(self, wave: Sequence[Candidate]) -> list[tuple[list[Bound], list[Candidate]] | None]:
        """Drive the wave's explorations together, one batched oracle round per step."""
        spec = self.oracle.input_spec
        results: list[tuple[list[Bound], list[Candidate]] | None] = [None] * len(wave)
        steps = [
            explore_leaf(
                c, (spec.low, spec.high), self.tolerance, self._inside_test(c.key), self.thresholds
            )
            for c in wave
        ]
        requests: dict[int, np.ndarray] = {}
        for i, step in enumerate(steps):
            try:
                requests[i] = next(step)
            except StopIteration as done:
                results[i] = done.value
        while requests:
            room = self.oracle.remaining
            served: list[int] = []
            for i in sorted(requests):
                if len(requests[i]) <= room:
                    served.append(i)
                    room -= len(requests[i])
                else:  # never sent: this leaf stays unexplored
                    del requests[i]
                    steps[i].close()
                    self.cut = True
            if not served:
                break
            batch = np.concatenate([requests[i] for i in served])
            self.exploring_queries += len(batch)
            answers = self.ask(batch)
            if answers is None:
                for step in steps:
                    step.close()
                return results
            start = 0
            for i in served:
                size = len(requests[i])
                reply = answers[start : start + size]
                start += size
                try:
                    requests[i] = steps[i].send(reply)
                except StopIteration as done:
                    del requests[i]
                    results[i] = done.value
        return results


@dataclass
class _Bracket:
    """The search for one side of one feature: the nearest values answered in and out."""

    feature: int
    side: int
    inside: float
    outside: float | None = None
    exit_answer: np.ndarray | None = None
    """the answer at the witness moved to ``outside``, if this search queried it"""
    end_tested: bool = False
    """the range's end has been tested (or need not be)"""
    recorded: bool = False
    """its final bracket is in the shared :class:`ThresholdTable`"""

    def beyond(self, value: float) -> bool:
        """``value`` lies strictly between ``inside`` and ``outside``, on the bound's side."""
        if self.side == LOWER:
            return value < self.inside and (self.outside is None or value > self.outside)
        return value > self.inside and (self.outside is None or value < self.outside)

    def update(self, value: float, inside: bool, answer: np.ndarray) -> None:
        if not self.beyond(value):
            return  # not informative (or contradicting a non-box region): ignore
        if inside:
            self.inside = value
        else:
            self.outside, self.exit_answer = value, answer

    def next_values(self, tolerance: float, known: ThresholdTable) -> list[float]:
        """The values to query next: both ends of the middle known threshold inside the bracket,
        else its midpoint (as float32); none once it is ``tolerance`` narrow (with 0: once its
        ends are adjacent float32 values, which fixes the side of every float32 input)."""
        if self.outside is None:
            return []
        low, high = sorted((self.inside, self.outside))
        if high - low <= tolerance:
            return []
        pairs = known.within(self.feature, low, high)
        if pairs:
            values = [v for v in pairs[len(pairs) // 2] if self.beyond(v)]
            if values:
                return values
        mid = float(np.float32((low + high) / 2))
        return [mid] if self.beyond(mid) else []


class ThresholdTable:
    """The threshold brackets found so far, per feature. Leaves share their ancestors'
    predicates, so a bound is first looked for among them (two queries per candidate) before
    it is bisected."""

    def __init__(self) -> None:
        self._pairs: dict[int, list[tuple[float, float]]] = {}

    def add(self, feature: int, a: float, b: float) -> None:
        low, high = sorted((a, b))
        pairs = self._pairs.setdefault(feature, [])
        if not any(p_low <= high and low <= p_high for p_low, p_high in pairs):
            bisect.insort(pairs, (low, high))

    def within(self, feature: int, low: float, high: float) -> list[tuple[float, float]]:
        """Known brackets inside ``[low, high]`` (other than it), in increasing order."""
        return [
            (a, b)
            for a, b in self._pairs.get(feature, ())
            if low <= a and b <= high and (a, b) != (low, high)
        ]


@dataclass(frozen=True)
class _Test:
    """One query of an exploration: a bisection probe of a bracket or a group test."""

    side: int
    features: tuple[int, ...]
    value: float
    bracket: _Bracket | None = None
    sibling: tuple[int, ...] = ()
    """a group test's untested other half: bounded for sure if this half is not"""


def _split(side: int, group: tuple[int, ...], end: float) -> list[_Test]:
    """Tests for a group known to hold a bounded feature: its first half, with the second half
    as sibling; a single feature is queried at the end (its answer is the exit's)."""
    if len(group) == 1:
        return [_Test(side, group, end)]
    half = len(group) // 2
    return [_Test(side, group[:half], end, sibling=group[half:])]


def explore_leaf(
    start: Candidate,
    limits: tuple[float, float],
    tolerance: float,
    inside: InsideTest,
    table: ThresholdTable,
) -> Exploration:
    """Find the bounds of the leaf reached by ``start.point``; return them and the answered
    points just across each of them (the exits to neighbouring leaves)."""
    witness = start.point
    ends = {LOWER: limits[0], UPPER: limits[1]}
    brackets: dict[tuple[int, int], _Bracket] = {}
    if start.known is not None:
        known = start.known
        brackets[known.feature, known.side] = _Bracket(
            known.feature, known.side, known.inside, known.outside, end_tested=True
        )
    tests: list[_Test] = []
    for hint in start.hints:
        if (hint.feature, hint.side) in brackets:
            continue
        bracket = _Bracket(hint.feature, hint.side, float(witness[hint.feature]))
        brackets[hint.feature, hint.side] = bracket
        for value in (hint.inside, hint.outside):
            if bracket.beyond(value):
                tests.append(_Test(hint.side, (hint.feature,), value, bracket))
    for side, end in ends.items():
        group = tuple(
            int(f) for f in np.flatnonzero(witness != end) if (int(f), side) not in brackets
        )
        if group:
            tests.append(_Test(side, group, end))

    while tests:
        points = np.repeat(witness[None], len(tests), axis=0)
        for row, test in zip(points, tests, strict=True):
            row[list(test.features)] = test.value
        answers = yield points
        verdicts = inside(points, answers)
        following: list[_Test] = []
        for test, answer, verdict in zip(tests, answers, verdicts, strict=True):
            if test.bracket is not None:
                test.bracket.update(test.value, bool(verdict), answer)
            elif not verdict and len(test.features) == 1:  # a bounded feature
                feature = test.features[0]
                bracket = brackets.setdefault(
                    (feature, test.side), _Bracket(feature, test.side, float(witness[feature]))
                )
                bracket.end_tested = True
                bracket.update(test.value, False, answer)
            elif not verdict:  # some feature of the group is bounded: halve it
                following += _split(test.side, test.features, test.value)
                if test.sibling:  # the other half may hold one too
                    following.append(_Test(test.side, test.sibling, test.value))
            elif test.sibling:  # none here, so the other half holds one
                following += _split(test.side, test.sibling, test.value)
        for bracket in brackets.values():
            end = ends[bracket.side]
            if bracket.outside is None:
                if not bracket.end_tested:
                    bracket.end_tested = True
                    if bracket.beyond(end):
                        following.append(_Test(bracket.side, (bracket.feature,), end, bracket))
                continue
            values = bracket.next_values(tolerance, table)
            following += [_Test(bracket.side, (bracket.feature,), v, bracket) for v in values]
            if not values and not bracket.recorded:
                table.add(bracket.feature, bracket.inside, bracket.outside)
                bracket.recorded = True
        tests = following

    bounds: list[Bound] = []
    exits: list[tuple[Bound, np.ndarray]] = []
    for bracket in brackets.values():
        if bracket.outside is None:
            continue  # no bound on this side
        bound = Bound(bracket.feature, bracket.side, bracket.inside, bracket.outside)
        bounds.append(bound)
        if bracket.exit_answer is not None:
            exits.append((bound, bracket.exit_answer))
    candidates = []
    for bound, answer in exits:
        point = witness.copy()
        point[bound.feature] = bound.outside
        hints = tuple(b for b in bounds if b.feature != bound.feature)
        candidates.append(Candidate(point, answer, bound.flipped(), hints))
    return bounds, candidates
