"""Model-zoo serving (issue 7): the selection policy, typed target errors that charge nothing,
replays, fingerprinting that pins a member and the target noise that thwarts it, the zoo cache,
and the spec, tournament and tuning validation of zoo configs.

The zoo is the session's digits zoo (``digits_zoo`` in conftest: members of accuracy about 0.15,
0.88 and 0.96 with pinned latencies, the middle one the reference); selection is tested on
hand-made profiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arena_testkit import ZOO_LATENCY_MS, ServiceFactory, open_oracle
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from arena.attacker import ATTACKS
from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.errors import InvalidParameters, InvalidQuery, QueryErrorCode
from arena.oracle import Answer, Rejection
from arena.record import MatchResult
from arena.referee import play_match
from arena.registry import build_plugin
from arena.service import VictimService
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.targets import NO_TARGETS, Targets, parse_targets
from arena.victims import TrainedVictim, build_victim_model, load_or_train
from arena.zoo import ZooModule, ZooProfile, select_member
from orchestration.config import ConfigError, parse_config
from orchestration.study_storage import StudyError
from orchestration.trial_scores import score, utility_baseline
from orchestration.tune_config import TuneConfig, parse_tune_config

INF = math.inf
BUDGET = 400
EXTRACTION = {"epochs": 1}
"""the fingerprinting matches only check who answered, so the substitute barely trains"""


def batch(data: DataSplits, n: int = 4, start: int = 0) -> np.ndarray:
    return data.test.x[start : start + n].numpy()


def served(service: VictimService, attacker_id: str) -> list[int]:
    return service.account_stats(attacker_id).served_by


# ---- 1. selection ----------------------------------------------------------------------------

# (accuracy, latency) per member: a Pareto zoo, then one with a dominated member and a tie
PROFILES = [
    ZooProfile((0.6, 0.8, 0.95), (1.0, 2.0, 5.0), reference=1),
    ZooProfile((0.6, 0.55, 0.8, 0.95, 0.9), (1.0, 1.5, 2.0, 5.0, 5.0), reference=3),
]


def expected_member(profile: ZooProfile, targets: Targets) -> tuple[set[int], bool]:
    """Brute force: the members the policy may pick (all equally good) and whether they meet."""
    members = range(profile.size)
    feasible = [i for i in members if profile.meets(i, targets)]
    if feasible:
        fastest = min(profile.latency_ms[i] for i in feasible)
        return {i for i in feasible if profile.latency_ms[i] == fastest}, True
    in_time = [i for i in members if profile.latency_ms[i] <= targets.max_latency_ms]
    if in_time:
        best = max(profile.accuracy[i] for i in in_time)
        return {i for i in in_time if profile.accuracy[i] == best}, False
    fastest = min(profile.latency_ms)
    return {i for i in members if profile.latency_ms[i] == fastest}, False


@pytest.mark.parametrize("profile", PROFILES, ids=["pareto", "dominated_and_tie"])
def test_selection_picks_the_cheapest_member_meeting_the_targets(profile: ZooProfile) -> None:
    rng = np.random.default_rng(0)
    outcomes = {True: 0, False: 0}
    for _ in range(2000):
        latency = INF if rng.random() < 0.2 else float(np.exp(rng.uniform(-1, 2.5)))
        targets = Targets(float(rng.uniform(0.4, 1.0)), latency)
        chosen = select_member(profile, targets)
        allowed, meetable = expected_member(profile, targets)
        assert chosen in allowed, (targets, chosen, allowed)
        assert profile.meets(chosen, targets) == meetable
        outcomes[meetable] += 1
    assert min(outcomes.values()) > 200  # both regimes were exercised


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.floats(0, 1), st.floats(1e-3, 10)), min_size=2, max_size=6, unique=True
    ),
    accuracy=st.floats(0, 1),
    latency=st.one_of(st.floats(1e-3, 20), st.just(INF)),
)
def test_selection_property_over_random_zoos(
    members: list[tuple[float, float]], accuracy: float, latency: float
) -> None:
    profile = ZooProfile(tuple(a for a, _ in members), tuple(t for _, t in members), 0)
    targets = Targets(accuracy, latency)
    chosen = select_member(profile, targets)
    allowed, meetable = expected_member(profile, targets)
    assert chosen in allowed
    assert profile.meets(chosen, targets) == meetable
    assert meetable == any(profile.meets(i, targets) for i in range(profile.size))


@pytest.mark.parametrize(
    ("targets", "member", "meets"),
    [
        (NO_TARGETS, 0, True),  # anything goes: the cheapest
        (Targets(0.7, INF), 1, True),
        (Targets(0.9, INF), 2, True),
        (Targets(0.8, 2.0), 1, True),  # both limits exactly at member 1's figures
        (Targets(0.99, 3.0), 1, False),  # accuracy unmeetable: most accurate in time
        (Targets(0.99, INF), 2, False),
        (Targets(0.9, 3.0), 1, False),  # only member 2 is accurate enough, and it is too slow
        (Targets(0.5, 0.5), 0, False),  # nothing within the latency limit: the fastest
        (Targets(1.0, 0.1), 0, False),
    ],
)
def test_selection_best_effort_cases(targets: Targets, member: int, meets: bool) -> None:
    profile = PROFILES[0]
    assert select_member(profile, targets) == member
    assert profile.meets(member, targets) == meets


def by_accuracy(profile: ZooProfile) -> list[int]:
    """Members from the least to the most accurate (ties: the faster first)."""
    return sorted(range(profile.size), key=lambda i: (profile.accuracy[i], -profile.latency_ms[i]))


def test_profile_orders_members_by_accuracy() -> None:
    assert by_accuracy(PROFILES[0]) == [0, 1, 2]
    assert by_accuracy(PROFILES[1]) == [1, 0, 2, 4, 3]
    tie = ZooProfile((0.9, 0.9), (2.0, 1.0), 0)
    assert by_accuracy(tie) == [0, 1]  # equally accurate: the faster last (more valuable)


# ---- 2. malformed targets --------------------------------------------------------------------

NAN = float("nan")
BAD_TARGETS: list[tuple[str, Any, str]] = [
    ("negative_latency", {"min_accuracy": 0.5, "max_latency_ms": -1.0}, "max_latency_ms must"),
    ("zero_latency", {"min_accuracy": 0.5, "max_latency_ms": 0}, "max_latency_ms must"),
    ("nan_latency", {"min_accuracy": 0.5, "max_latency_ms": NAN}, "max_latency_ms must"),
    ("nan_accuracy", {"min_accuracy": NAN, "max_latency_ms": 1.0}, "min_accuracy must"),
    ("inf_accuracy", {"min_accuracy": INF, "max_latency_ms": 1.0}, "min_accuracy must"),
    ("accuracy_below_0", {"min_accuracy": -0.1, "max_latency_ms": 1.0}, "min_accuracy must"),
    ("accuracy_above_1", {"min_accuracy": 1.5, "max_latency_ms": 1.0}, "min_accuracy must"),
    ("missing_latency", {"min_accuracy": 0.5}, "targets miss max_latency_ms"),
    ("missing_accuracy", {"max_latency_ms": 1.0}, "targets miss min_accuracy"),
    ("missing_both", {}, "targets miss min_accuracy, max_latency_ms"),
    (
        "unknown_field",
        {"min_accuracy": 0.5, "max_latency_ms": 1.0, "member": 2},
        "unknown target fields member",
    ),
    ("list", [0.5, 1.0], "targets must be a mapping"),
    ("string", "fast", "targets must be a mapping"),
    ("number", 0.5, "targets must be a mapping"),
    ("bool_accuracy", {"min_accuracy": True, "max_latency_ms": 1.0}, "min_accuracy must"),
    ("bool_latency", {"min_accuracy": 0.5, "max_latency_ms": True}, "max_latency_ms must"),
    ("string_accuracy", {"min_accuracy": "0.5", "max_latency_ms": 1.0}, "min_accuracy must"),
    ("none_latency", {"min_accuracy": 0.5, "max_latency_ms": None}, "max_latency_ms must"),
]


@pytest.mark.parametrize(
    ("case", "targets", "says"), BAD_TARGETS, ids=[c for c, _, _ in BAD_TARGETS]
)
def test_malformed_targets_are_typed_errors_that_charge_nothing(
    make_zoo_service: ServiceFactory, digits_data: DataSplits, case: str, targets: Any, says: str
) -> None:
    service = make_zoo_service()
    oracle = open_oracle(service, case, 20)
    oracle.query(torch.from_numpy(batch(digits_data)))  # a good batch first: 4 used
    before = service.account_stats(case)
    with pytest.raises(InvalidQuery) as info:
        oracle.query(torch.from_numpy(batch(digits_data)), targets)
    assert info.value.code is QueryErrorCode.TARGETS
    assert says in info.value.message
    after = service.account_stats(case)
    assert after.used == before.used == 4 and after.batches == 1
    assert after.served_by == before.served_by
    assert oracle.remaining == 16 and oracle.used == 4
    assert isinstance(parse_targets(targets), str)


def test_valid_target_mappings_are_accepted(
    make_zoo_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_zoo_service()
    oracle = open_oracle(service, "mapping", 12)
    x = torch.from_numpy(batch(digits_data))
    oracle.query(x, {"min_accuracy": 0.9, "max_latency_ms": INF})  # type: ignore[arg-type]
    oracle.query(x, {"min_accuracy": 1, "max_latency_ms": 0.01})  # type: ignore[arg-type]
    oracle.query(x, Targets(0.5, 0.06))
    # the 0.96 member; nothing within 0.01 ms: the fastest (a miss); the middle one
    assert served(service, "mapping") == [4, 4, 4]
    assert service.account_stats("mapping").targets_met == 8


def test_a_single_model_victim_refuses_targets(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_service()
    assert service.zoo_profile() is None
    oracle = open_oracle(service, "single", 10)
    for targets in (Targets(0.5, 1.0), NO_TARGETS, {"min_accuracy": 0.5}):
        with pytest.raises(InvalidQuery) as info:
            oracle.query(torch.from_numpy(batch(digits_data)), targets)  # type: ignore[arg-type]
        assert info.value.code is QueryErrorCode.TARGETS
        assert "single model" in info.value.message
    assert service.account_stats("single").used == 0 and oracle.remaining == 10
    assert service.account_stats("single").served_by == []
    oracle.query(torch.from_numpy(batch(digits_data)))  # without targets it is served
    assert oracle.used == 4


@pytest.mark.parametrize(
    ("accuracy", "latency"),
    [(-0.1, 1.0), (1.5, 1.0), (NAN, 1.0), (True, 1.0), (0.5, 0.0), (0.5, -1.0), (0.5, NAN),
     (0.5, -INF), (0.5, False), ("0.5", 1.0)],
)  # fmt: skip
def test_targets_refuse_bad_values(accuracy: Any, latency: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        Targets(accuracy, latency)


def test_targets_accept_the_edges() -> None:
    assert Targets(0, INF) == NO_TARGETS
    assert Targets(1.0, 1e-9).min_accuracy == 1.0
    assert parse_targets({"min_accuracy": 0, "max_latency_ms": 5}) == Targets(0.0, 5.0)
    assert parse_targets(NO_TARGETS) is NO_TARGETS


# ---- 3. replays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replayed",
    [Targets(0.9, INF), None, {"min_accuracy": 0.5, "max_latency_ms": INF}],
    ids=["other_targets", "no_targets", "other_mapping"],
)
def test_a_query_id_replayed_with_other_targets_is_refused(
    make_zoo_service: ServiceFactory, digits_data: DataSplits, replayed: Any
) -> None:
    service = make_zoo_service()
    service.open_account("replay", 20)
    x = batch(digits_data)
    first = service.answer("replay", "q1", x, Targets(0.0, 0.03))
    assert isinstance(first, Answer) and first.used == 4
    again = service.answer("replay", "q1", x, replayed)
    assert isinstance(again, Rejection) and again.code == "query_id_reused"
    assert isinstance(again.to_error(), InvalidQuery)
    assert service.account_stats("replay").used == 4
    assert served(service, "replay") == [4, 0, 0]


def test_a_query_id_replayed_with_the_same_targets_is_answered_once(
    make_zoo_service: ServiceFactory, digits_data: DataSplits
) -> None:
    service = make_zoo_service(["target_noise"])  # the stored answer, not a fresh noisy pick
    service.open_account("retry", 20)
    x = batch(digits_data)
    first = service.answer("retry", "q1", x, Targets(0.5, INF))
    same = {"min_accuracy": 0.5, "max_latency_ms": INF}  # equal targets, sent as a mapping
    for targets in (Targets(0.5, INF), same, Targets(0.5, INF)):
        again = service.answer("retry", "q1", x, targets)
        assert isinstance(first, Answer) and isinstance(again, Answer)
        np.testing.assert_array_equal(again.outputs, first.outputs)
        assert again.used == 4
    stats = service.account_stats("retry")
    assert stats.used == 4 and stats.batches == 1 and sum(stats.served_by) == 4


def test_equal_targets_written_differently_are_the_same_replay(
    make_zoo_service: ServiceFactory, digits_data: DataSplits
) -> None:
    """``Targets(0, 1) == Targets(0.0, 1.0)``: a retry that spells them otherwise (ints, floats,
    a mapping) is the same query, answered from the ledger."""
    service = make_zoo_service()
    service.open_account("spelling", 20)
    x = batch(digits_data)
    first = service.answer("spelling", "q1", x, Targets(0, 1))
    for same in (Targets(0.0, 1.0), {"min_accuracy": 0, "max_latency_ms": 1.0}):
        again = service.answer("spelling", "q1", x, same)
        assert isinstance(first, Answer) and isinstance(again, Answer), again
        np.testing.assert_array_equal(again.outputs, first.outputs)
    assert service.account_stats("spelling").used == 4


def test_a_zoo_without_targets_serves_the_cheapest_member(
    make_zoo_service: ServiceFactory, digits_zoo: TrainedVictim, digits_data: DataSplits
) -> None:
    service = make_zoo_service()
    oracle = open_oracle(service, "plain", 8)
    x = torch.from_numpy(batch(digits_data))
    answers = oracle.query(x)
    assert served(service, "plain") == [4, 0, 0]
    assert service.account_stats("plain").targets_met == 4
    assert isinstance(digits_zoo.model, ZooModule)
    with torch.no_grad():
        expected = torch.softmax(digits_zoo.model.member(0)(x), dim=1)
    torch.testing.assert_close(answers, expected)


# ---- 4-5. fingerprinting, and noise on the targets -------------------------------------------

Played = Callable[[int, float], MatchResult]


@pytest.fixture(scope="module")
def fingerprinted(
    digits_zoo: TrainedVictim,
    digits_zoo_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> Played:
    """``fingerprinted(target_rank, noise_scale)``: the fingerprinting match on the digits zoo
    (``noise_scale`` 0: undefended), played once per module."""
    results: dict[tuple[int, float], MatchResult] = {}

    def play(target_rank: int, noise_scale: float) -> MatchResult:
        if (target_rank, noise_scale) not in results:
            params = {"target_rank": target_rank, "extraction_params": EXTRACTION}
            noise = PluginSpec(name="target_noise", params={"scale": noise_scale})
            spec = MatchSpec(
                victim=digits_zoo_spec,
                defenses=(noise,) if noise_scale else (),
                attack=PluginSpec(name="fingerprint", params=params),
                budget=BUDGET,
            )
            results[target_rank, noise_scale] = play_match(spec, digits_data, victim_cache)
        return results[target_rank, noise_scale]

    return play


def wanted_share(result: MatchResult, profile: ZooProfile, target_rank: int) -> float:
    counts = json.loads(result.served_by)
    assert sum(counts) == result.queries_used
    return float(counts[by_accuracy(profile)[target_rank]] / sum(counts))


@pytest.mark.parametrize("target_rank", [0, 1, -1])
def test_fingerprinting_pins_the_wanted_member(
    fingerprinted: Played, digits_zoo: TrainedVictim, target_rank: int
) -> None:
    assert isinstance(digits_zoo.model, ZooModule)
    profile = digits_zoo.model.profile()
    result = fingerprinted(target_rank, 0.0)
    counts = json.loads(result.served_by)
    assert result.queries_used == BUDGET and len(counts) == profile.size
    assert wanted_share(result, profile, target_rank) >= 0.8
    overhead = BUDGET - counts[by_accuracy(profile)[target_rank]]
    assert overhead <= 0.15 * BUDGET  # ~45 here: bisection (4 probes a request) and checks
    assert result.reference_share == counts[profile.reference] / BUDGET
    assert result.goodput == 1.0  # undefended, every benign request is served in its targets
    assert result.victim_accuracy == profile.accuracy[profile.reference]


def test_target_noise_breaks_the_pin_and_costs_goodput(
    fingerprinted: Played, digits_zoo: TrainedVictim
) -> None:
    """The middle member serves an interval bounded on both sides: noise as wide as the zoo
    sends most of the thief's batches elsewhere, and honest callers miss their targets."""
    assert isinstance(digits_zoo.model, ZooModule)
    profile = digits_zoo.model.profile()
    clean, noisy = fingerprinted(1, 0.0), fingerprinted(1, 1.0)
    assert wanted_share(clean, profile, 1) >= 0.8
    assert wanted_share(noisy, profile, 1) < wanted_share(clean, profile, 1) - 0.3  # ~0.27
    assert clean.goodput == 1.0
    assert noisy.goodput is not None and noisy.goodput < 0.9  # ~0.43
    assert noisy.utility == clean.utility  # the answers themselves are untouched


def test_the_naive_thief_steals_whatever_its_targets_reach(
    digits_zoo: TrainedVictim,
    digits_zoo_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> None:
    for params, member in (({}, 0), ({"min_accuracy": 0.5}, 1), ({"min_accuracy": 0.93}, 2)):
        attack = PluginSpec(name="zoo_naive", params={**params, "extraction_params": EXTRACTION})
        spec = MatchSpec(victim=digits_zoo_spec, defenses=(), attack=attack, budget=100)
        counts = json.loads(play_match(spec, digits_data, victim_cache).served_by)
        assert counts[member] == sum(counts) == 100, (params, counts)


BAD_THIEVES: list[tuple[str, dict[str, Any], str]] = [
    ("fingerprint", {"extraction": "fingerprint"}, "single-model attack"),
    ("zoo_naive", {"extraction": "zoo_naive"}, "single-model attack"),
    ("fingerprint", {"extraction": "knockof"}, "unknown attack 'knockof'"),
    ("fingerprint", {"extraction_params": {"epochs": 0}}, "extraction"),
    ("fingerprint", {"extraction_params": [1]}, "extraction_params must be a mapping"),
    ("fingerprint", {"target_rank": "top"}, "target_rank must be an integer"),
    ("fingerprint", {"target_rank": True}, "target_rank must be an integer"),
    ("fingerprint", {"probes": 0}, "probes must be an integer >= 1"),
    ("fingerprint", {"max_requests": 1}, "max_requests must be an integer >= 2"),
    ("fingerprint", {"checks": -1}, "checks must be an integer >= 0"),
    ("fingerprint", {"resolution": 0.5}, "resolution must be a number in (0, 0.5)"),
    ("fingerprint", {"resolution": 0}, "resolution must be a number in (0, 0.5)"),
    ("zoo_naive", {"min_accuracy": 1.5}, "min_accuracy must be"),
    ("zoo_naive", {"max_latency_ms": 0}, "max_latency_ms must be"),
    ("zoo_naive", {"max_latency_ms": -2.0}, "max_latency_ms must be"),
]


@pytest.mark.parametrize(
    ("name", "params", "says"), BAD_THIEVES, ids=[f"{n}-{p}" for n, p, _ in BAD_THIEVES]
)
def test_zoo_thieves_refuse_bad_parameters(name: str, params: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidParameters) as info:
        build_plugin(ATTACKS, name, params)
    assert says in str(info.value)


# ---- 6. target_noise ---------------------------------------------------------------------------


def served_sequence(service: VictimService, attacker_id: str, x: np.ndarray) -> list[int]:
    """Which member answered each of ``len(x)`` one-image queries at targets inside member 1's
    interval (0.15 < accuracy <= 0.88), not far from its upper boundary."""
    service.open_account(attacker_id, len(x))
    sequence = []
    for i in range(len(x)):
        before = served(service, attacker_id)
        answer = service.answer(attacker_id, f"q{i}", x[i : i + 1], Targets(0.7, INF))
        assert isinstance(answer, Answer)
        sequence.append(answered_by(before, served(service, attacker_id)))
    return sequence


def answered_by(before: list[int], after: list[int]) -> int:
    """The one member whose count grew between two ``served_by`` snapshots."""
    [member] = [m for m, (b, a) in enumerate(zip(before, after, strict=True)) if a != b]
    return member


def test_target_noise_is_deterministic_per_account(
    make_zoo_service: ServiceFactory, digits_data: DataSplits
) -> None:
    x = batch(digits_data, 40)
    noise = PluginSpec(name="target_noise", params={"scale": 0.5})
    first = served_sequence(make_zoo_service([noise]), "thief", x)
    second = served_sequence(make_zoo_service([noise]), "thief", x)
    assert first == second
    assert len(set(first)) >= 2  # the noise does move the selection
    other = served_sequence(make_zoo_service([noise]), "another-thief", x)
    assert other != first  # its own stream


def test_target_noise_scale_zero_changes_nothing(
    make_zoo_service: ServiceFactory, digits_data: DataSplits
) -> None:
    x = batch(digits_data, 10)
    off = PluginSpec(name="target_noise", params={"scale": 0})
    assert served_sequence(make_zoo_service([off]), "t", x) == [1] * 10
    plain, quiet = make_zoo_service(), make_zoo_service([off])
    for service in (plain, quiet):
        service.open_account("t", 40)
    for targets in (NO_TARGETS, Targets(0.5, INF), Targets(0.9, 0.07), Targets(0.95, INF)):
        a = plain.answer("t", repr(targets), x, targets)
        b = quiet.answer("t", repr(targets), x, targets)
        assert isinstance(a, Answer) and isinstance(b, Answer)
        np.testing.assert_array_equal(a.outputs, b.outputs)
    assert served(plain, "t") == served(quiet, "t")


def test_target_noise_leaves_the_answers_of_the_member_it_picks(
    make_zoo_service: ServiceFactory, digits_zoo: TrainedVictim, digits_data: DataSplits
) -> None:
    assert isinstance(digits_zoo.model, ZooModule)
    service = make_zoo_service([PluginSpec(name="target_noise", params={"scale": 1.0})])
    service.open_account("t", 40)
    x = batch(digits_data, 4)
    for i in range(10):
        before = served(service, "t")
        answer = service.answer("t", f"q{i}", x, Targets(0.7, INF))
        assert isinstance(answer, Answer)
        member = answered_by(before, served(service, "t"))
        with torch.no_grad():
            expected = torch.softmax(digits_zoo.model.member(member)(torch.from_numpy(x)), dim=1)
        np.testing.assert_allclose(answer.outputs, expected.numpy(), atol=1e-6)


def test_target_noise_is_a_no_op_on_a_single_model(
    make_service: ServiceFactory, digits_data: DataSplits
) -> None:
    plain, noisy = make_service(), make_service([PluginSpec(name="target_noise")])
    x = batch(digits_data, 8)
    for service in (plain, noisy):
        service.open_account("t", 8)
    a, b = plain.answer("t", "q", x), noisy.answer("t", "q", x)
    assert isinstance(a, Answer) and isinstance(b, Answer)
    np.testing.assert_array_equal(a.outputs, b.outputs)


@pytest.mark.parametrize("scale", [-0.1, NAN, INF, "0.5", True, None])
def test_target_noise_refuses_bad_scales(scale: Any) -> None:
    with pytest.raises(InvalidParameters, match="target_noise"):
        build_plugin(DEFENSES, "target_noise", {"scale": scale})


def test_target_noise_scales_with_the_zoo() -> None:
    """Same scale, same relative spread on any zoo; unlimited latency stays unlimited."""
    noise = build_plugin(DEFENSES, "target_noise", {"scale": 1.0})
    narrow = ZooProfile((0.5, 0.6), (1.0, 2.0), 0)
    wide = ZooProfile((0.2, 0.8), (1.0, 16.0), 0)
    rng_a, rng_b, other = (np.random.default_rng(s) for s in (3, 3, 4))
    for _ in range(50):
        a = noise.perturb_targets(Targets(0.55, 1.5), narrow, rng_a)
        b = noise.perturb_targets(Targets(0.55, 1.5), wide, rng_b)
        assert 0 <= a.min_accuracy <= 1 and a.max_latency_ms > 0
        if 0 < a.min_accuracy < 1 and 0 < b.min_accuracy < 1:  # not clipped
            assert b.min_accuracy - 0.55 == pytest.approx(6 * (a.min_accuracy - 0.55))
        assert math.log(b.max_latency_ms / 1.5) == pytest.approx(
            4 * math.log(a.max_latency_ms / 1.5)
        )
        assert noise.perturb_targets(Targets(0.55, INF), wide, other).max_latency_ms == INF


# ---- 7. the zoo cache --------------------------------------------------------------------------


def test_a_zoo_is_built_once_then_loaded_from_the_cache(
    digits_zoo_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> None:
    assert digits_zoo_spec.members is not None
    linear, mlp = digits_zoo_spec.members[1:]
    spec = VictimSpec(dataset="digits", arch="zoo", members=(mlp, linear))  # reference unset
    first = load_or_train(spec, digits_data, victim_cache)
    second = load_or_train(spec, digits_data, victim_cache)
    assert not first.from_cache and second.from_cache
    assert isinstance(first.model, ZooModule) and isinstance(second.model, ZooModule)
    profile = first.model.profile()
    assert second.model.profile() == profile
    assert profile.reference == 0  # unset: the most accurate member
    assert second.test_accuracy == first.test_accuracy == profile.accuracy[0]
    assert all(0 < t < 100 for t in profile.latency_ms)  # measured on this machine
    for i, member in enumerate(spec.members or ()):
        alone = load_or_train(member, digits_data, victim_cache)
        assert alone.from_cache  # the zoo's members are cached victims of their own
        assert profile.accuracy[i] == alone.test_accuracy
        for key, value in alone.model.state_dict().items():
            torch.testing.assert_close(second.model.member(i).state_dict()[key], value)


def test_build_victim_model_rebuilds_a_zoo_from_its_state_dict(
    digits_zoo: TrainedVictim, digits_zoo_spec: VictimSpec, digits_data: DataSplits
) -> None:
    zoo = digits_zoo.model
    assert isinstance(zoo, ZooModule)
    state = {k: v.clone() for k, v in zoo.state_dict().items()}
    rebuilt = build_victim_model(
        digits_zoo_spec, digits_data.input_shape, digits_data.num_classes, state
    )
    assert isinstance(rebuilt, ZooModule) and not rebuilt.training
    assert rebuilt.profile() == zoo.profile()
    assert rebuilt.profile().latency_ms == ZOO_LATENCY_MS
    x = digits_data.test.x[:50]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), zoo(x), atol=0, rtol=0)
        for i in range(zoo.profile().size):
            torch.testing.assert_close(rebuilt.member(i)(x), zoo.member(i)(x), atol=0, rtol=0)
        torch.testing.assert_close(zoo(x), zoo.member(1)(x))  # forward is the reference's


# ---- 8. spec and config validation -------------------------------------------------------------

MLP = {"dataset": "digits", "arch": "mlp", "epochs": 20}
LINEAR = {"dataset": "digits", "arch": "softmax_regression", "epochs": 20}
ZOO = {"dataset": "digits", "arch": "zoo", "members": [LINEAR, MLP]}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"dataset": "digits", "arch": "zoo"}, "arch 'zoo' needs members"),
        ({**ZOO, "members": [MLP]}, "at least 2 items"),
        ({**ZOO, "members": []}, "at least 2 items"),
        ({**ZOO, "members": [LINEAR, {**MLP, "dataset": "mnist"}]}, "members.1: dataset 'mnist'"),
        ({**ZOO, "members": [LINEAR, ZOO]}, "members.1: a zoo cannot contain another zoo"),
        ({**ZOO, "reference": 2}, "reference 2 is not a member index (0..1)"),
        ({**ZOO, "reference": -1}, "greater than or equal to 0"),
        ({**MLP, "members": [LINEAR, MLP]}, "members and reference apply to arch 'zoo' only"),
        ({**MLP, "reference": 0}, "members and reference apply to arch 'zoo' only"),
    ],
)
def test_bad_zoo_specs_fail_with_clear_messages(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as info:
        VictimSpec.model_validate(raw)
    assert says in str(info.value)


def test_zoo_spec_keys_depend_on_members_only_for_zoos() -> None:
    single = VictimSpec.model_validate(MLP)
    assert "members" not in single.model_dump() and "reference" not in single.model_dump()
    zoo = VictimSpec.model_validate(ZOO)
    assert zoo.is_zoo and not single.is_zoo
    assert zoo.key() != VictimSpec.model_validate({**ZOO, "members": [MLP, LINEAR]}).key()
    assert zoo.key() != VictimSpec.model_validate({**ZOO, "reference": 1}).key()


def tournament(**changes: Any) -> dict[str, Any]:
    return {
        "name": "zoo",
        "victims": [ZOO],
        "defenses": ["none"],
        "attacks": [{"name": "knockoff", "params": {"epochs": 1}}],
        "budgets": [100],
        **changes,
    }


def config_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"attacks": ["knockoff", "fingerprint"]}, "fingerprint"),
        ({"attacks": ["zoo_naive"]}, "zoo_naive"),
        ({"defenses": ["none", {"name": "target_noise", "params": {"scale": 1}}]}, "target_noise"),
    ],
)
def test_zoo_plugins_without_a_zoo_victim_are_config_errors(
    changes: dict[str, Any], name: str
) -> None:
    found = config_problems(tournament(victims=[MLP], **changes))
    assert any(repr(name) in m and "no victim is a zoo" in m for _, m in found), found


def test_zoo_thieves_and_zoo_defenses_play_only_the_zoo() -> None:
    raw = tournament(
        victims=[MLP, ZOO],
        defenses=["none", "target_noise"],
        attacks=["knockoff", "fingerprint"],
    )
    matches = parse_config(raw).matches()
    played = {(m.victim.arch, m.attack.name, tuple(d.name for d in m.defenses)) for m in matches}
    assert played == {
        ("mlp", "knockoff", ("none",)),
        ("zoo", "knockoff", ("none",)),
        ("zoo", "knockoff", ("target_noise",)),
        ("zoo", "fingerprint", ("none",)),
        ("zoo", "fingerprint", ("target_noise",)),
    }


def test_zoo_members_are_validated_with_their_path() -> None:
    bad = {**ZOO, "members": [LINEAR, {**MLP, "arch": "mlpp"}]}
    found = config_problems(tournament(victims=[bad]))
    assert any(p == "victims.0.members.1.arch" and "'mlpp'" in m for p, m in found), found


@pytest.mark.parametrize("defense", ["mad", "adaptive_misinformation", "gradient_redirection"])
def test_defenses_that_prepare_models_are_refused_on_a_zoo(defense: str) -> None:
    """They would build a copy of the victim's architecture (a zoo has none) and serve it
    instead of the zoo: a config error at load, not a failed match."""
    found = config_problems(tournament(victims=[ZOO], defenses=["none", defense]))
    assert any(p == "defenses" and defense in m and "zoo" in m for p, m in found), found


def test_a_zoo_with_a_tree_member_needs_a_substitute_architecture() -> None:
    tree = {"dataset": "digits", "arch": "decision_tree", "max_depth": 4}
    zoo = {**ZOO, "members": [tree, MLP], "reference": 0}
    found = config_problems(tournament(victims=[zoo]))
    assert any(p == "substitute_arch" for p, _ in found), found
    assert parse_config(tournament(victims=[zoo], substitute_arch="mlp")).matches()


def tune(**changes: Any) -> dict[str, Any]:
    return {
        "name": "zoo-tune",
        "victim": ZOO,
        "defense": "target_noise",
        "attacks": [{"name": "fingerprint", "params": {"extraction_params": EXTRACTION}}],
        "budget": 100,
        "trials": 2,
        "utility": "goodput",
        **changes,
    }


def test_goodput_utility_needs_a_zoo_victim() -> None:
    config = parse_tune_config(tune())
    assert config.utility == "goodput" and set(config.space()) == {"scale"}
    raw = tune(victim=MLP, defense="reverse_sigmoid", attacks=["knockoff"])
    with pytest.raises(ConfigError) as info:
        parse_tune_config(raw)
    assert ("utility", "goodput is measured on model zoos only: use a zoo victim") in (
        info.value.problems
    )
    with pytest.raises(ConfigError) as info:
        parse_tune_config(tune(victim=MLP))  # and the zoo plug-ins are named too
    assert {path for path, _ in info.value.problems} == {"defense", "attacks", "utility"}


# ---- 9. tuning on goodput ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_zoo_result(
    digits_zoo: TrainedVictim,
    digits_zoo_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> MatchResult:
    spec = MatchSpec(
        victim=digits_zoo_spec,
        defenses=(PluginSpec(name="target_noise", params={"scale": 0.5}),),
        attack=PluginSpec(name="knockoff", params={"epochs": 1}),
        budget=100,
    )
    return play_match(spec, digits_data, victim_cache)


def test_score_on_goodput_uses_the_goodput_and_a_floor_from_one(
    noisy_zoo_result: MatchResult,
) -> None:
    result = noisy_zoo_result
    assert result.goodput is not None and 0 < result.goodput < 1
    assert result.served_by and result.reference_share is not None
    assert result.utility == result.victim_accuracy  # the answers themselves are untouched
    by_goodput = score([result], 1.0, 0.01, None, "goodput")
    assert by_goodput.utility == result.goodput
    assert not by_goodput.feasible  # goodput < 0.99
    assert score([result], 1.0, 1 - result.goodput, None, "goodput").feasible
    by_accuracy = score([result], result.victim_accuracy, 0.01, None)
    assert by_accuracy.utility == result.utility and by_accuracy.feasible
    # worst case over the suite, as for accuracy
    better = result.model_copy(update={"goodput": 0.995, "attack": "other"})
    assert score([better], 1.0, 0.01, None, "goodput").feasible
    both = score([better, result], 1.0, 0.01, None, "goodput")
    assert both.utility == result.goodput and not both.feasible


def test_score_on_goodput_refuses_single_model_results(noisy_zoo_result: MatchResult) -> None:
    single = noisy_zoo_result.model_copy(update={"goodput": None, "victim_arch": "mlp"})
    with pytest.raises(StudyError, match="model zoos only"):
        score([single], 1.0, 0.01, None, "goodput")


def test_utility_baseline_is_one_for_goodput() -> None:
    config: TuneConfig = parse_tune_config(tune())
    assert utility_baseline(config, 0.88) == 1.0
    accuracy = parse_tune_config(tune(utility="accuracy"))
    assert utility_baseline(accuracy, 0.88) == 0.88
