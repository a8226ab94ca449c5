"""Q1-Q3 and B2/B3: malformed queries are refused with a typed code and charge nothing; budget
edges are exact; a replayed query id is answered from the ledger and charged once."""

from __future__ import annotations

import itertools
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from arena_testkit import ServiceFactory, open_oracle
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from arena.data import DataSplits
from arena.defenses import DEFENSES
from arena.errors import BudgetExhausted, InvalidQuery, QueryErrorCode
from arena.oracle import Answer, Oracle, Rejection
from arena.service import VictimService
from arena.work import solve

SHAPE = (1, 8, 8)  # digits
ABOVE_ONE = float(np.nextafter(np.float32(1), np.float32(2)))  # smallest float32 above 1


def valid(batch: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *SHAPE), dtype=np.float32)


def with_value(value: float, at: tuple[int, ...] = (1, 0, 3, 5)) -> np.ndarray:
    x = valid()
    x[at] = value
    return x


# (id, payload factory, expected code). Factories so every case gets a fresh object.
MALFORMED: list[tuple[str, Callable[[], Any], QueryErrorCode]] = [
    ("none", lambda: None, QueryErrorCode.NOT_ARRAY),
    ("flat_list", lambda: [0.5] * 64, QueryErrorCode.NOT_ARRAY),
    ("nested_list", lambda: valid().tolist(), QueryErrorCode.NOT_ARRAY),
    ("str", lambda: "0.5", QueryErrorCode.NOT_ARRAY),
    ("bytes", lambda: valid().tobytes(), QueryErrorCode.NOT_ARRAY),
    ("dict", lambda: {"x": valid()}, QueryErrorCode.NOT_ARRAY),
    ("numpy_scalar", lambda: np.float32(0.5), QueryErrorCode.NOT_ARRAY),
    ("np_float64", lambda: valid().astype(np.float64), QueryErrorCode.DTYPE),
    ("np_float16", lambda: valid().astype(np.float16), QueryErrorCode.DTYPE),
    ("np_int64", lambda: np.zeros((4, *SHAPE), np.int64), QueryErrorCode.DTYPE),
    ("np_uint8", lambda: np.zeros((4, *SHAPE), np.uint8), QueryErrorCode.DTYPE),
    ("np_bool", lambda: np.zeros((4, *SHAPE), bool), QueryErrorCode.DTYPE),
    ("np_object", lambda: valid().astype(object), QueryErrorCode.DTYPE),
    ("torch_float64", lambda: torch.from_numpy(valid()).double(), QueryErrorCode.DTYPE),
    ("torch_float16", lambda: torch.from_numpy(valid()).half(), QueryErrorCode.DTYPE),
    ("torch_int64", lambda: torch.zeros(4, *SHAPE, dtype=torch.int64), QueryErrorCode.DTYPE),
    ("torch_uint8", lambda: torch.zeros(4, *SHAPE, dtype=torch.uint8), QueryErrorCode.DTYPE),
    ("ndim0", lambda: np.array(0.5, np.float32), QueryErrorCode.SHAPE),
    ("ndim1", lambda: np.zeros(64, np.float32), QueryErrorCode.SHAPE),
    ("ndim3_no_batch", lambda: np.zeros(SHAPE, np.float32), QueryErrorCode.SHAPE),
    ("ndim2_flat", lambda: np.zeros((4, 64), np.float32), QueryErrorCode.SHAPE),
    ("ndim5", lambda: np.zeros((4, 1, 1, 8, 8), np.float32), QueryErrorCode.SHAPE),
    ("sample_shape_w", lambda: np.zeros((4, 1, 8, 9), np.float32), QueryErrorCode.SHAPE),
    ("sample_shape_c", lambda: np.zeros((4, 3, 8, 8), np.float32), QueryErrorCode.SHAPE),
    ("channels_last", lambda: np.zeros((4, 8, 8, 1), np.float32), QueryErrorCode.SHAPE),
    ("torch_sample_shape", lambda: torch.zeros(4, 1, 28, 28), QueryErrorCode.SHAPE),
    ("empty", lambda: np.zeros((0, *SHAPE), np.float32), QueryErrorCode.EMPTY),
    ("torch_empty", lambda: torch.zeros(0, *SHAPE), QueryErrorCode.EMPTY),
    ("over_max_batch", lambda: valid(1025), QueryErrorCode.BATCH_TOO_LARGE),
    ("nan", lambda: with_value(np.nan), QueryErrorCode.NON_FINITE),
    ("pos_inf", lambda: with_value(np.inf), QueryErrorCode.NON_FINITE),
    ("neg_inf", lambda: with_value(-np.inf), QueryErrorCode.NON_FINITE),
    ("all_nan", lambda: np.full((2, *SHAPE), np.nan, np.float32), QueryErrorCode.NON_FINITE),
    ("torch_nan", lambda: torch.from_numpy(with_value(np.nan)), QueryErrorCode.NON_FINITE),
    ("below_zero", lambda: with_value(-0.01), QueryErrorCode.OUT_OF_RANGE),
    ("tiny_negative", lambda: with_value(-1e-30), QueryErrorCode.OUT_OF_RANGE),
    ("above_one", lambda: with_value(1.01), QueryErrorCode.OUT_OF_RANGE),
    ("just_above_one", lambda: with_value(ABOVE_ONE), QueryErrorCode.OUT_OF_RANGE),
    ("pixel_255", lambda: valid() * 255, QueryErrorCode.OUT_OF_RANGE),
    ("torch_out_of_range", lambda: torch.from_numpy(with_value(7.0)), QueryErrorCode.OUT_OF_RANGE),
]  # fmt: skip


@pytest.fixture()
def service(make_service: ServiceFactory) -> VictimService:
    return make_service()


def assert_uncharged(service: VictimService, oracle: Oracle, attacker: str) -> None:
    stats = service.account_stats(attacker)
    assert oracle.used == 0
    assert stats.used == 0
    assert stats.batches == 0
    assert service.account_status(attacker).used == 0


@pytest.mark.parametrize(
    ("make_payload", "code"), [(m, c) for _, m, c in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_Q1_malformed_query_rejected_uncharged(
    service: VictimService, make_payload: Callable[[], Any], code: QueryErrorCode
) -> None:
    oracle = open_oracle(service, "mallory", 50)
    with pytest.raises(InvalidQuery) as info:
        oracle.query(make_payload())
    assert info.value.code is code
    assert code.value in str(info.value)
    assert_uncharged(service, oracle, "mallory")
    # The same payload sent straight to the service comes back as a value, not an exception.
    direct = service.answer("mallory", "direct-0", make_payload())
    assert isinstance(direct, Rejection)
    assert direct.code == code.value
    assert_uncharged(service, oracle, "mallory")
    # The victim still answers a valid batch afterwards, and only that batch is charged.
    out = oracle.query(torch.from_numpy(valid(3)))
    assert out.shape == (3, 10)
    assert oracle.used == 3 == service.account_stats("mallory").used


def answer_valid(service: VictimService, query_id: str, x: np.ndarray) -> Answer | Rejection:
    """A valid batch of mallory's, with its proof of work when the chain asks for one."""
    challenge = service.work_challenge("mallory", query_id, len(x))
    work = None if challenge is None else solve(challenge).proof
    return service.answer("mallory", query_id, x, work=work)


@pytest.mark.parametrize("defense", DEFENSES.names())
def test_Q1_many_malformed_queries_then_valid_still_served(
    make_service: ServiceFactory, defense: str
) -> None:
    """Q1 at CI scale: a few thousand rejected batches of every kind, nothing charged."""
    service = make_service([defense])
    service.open_account("mallory", 10)
    before = answer_valid(service, "before", valid(2))
    assert isinstance(before, Answer)
    for i in range(1000 if defense == "none" else 200):
        _, make_payload, code = MALFORMED[i % len(MALFORMED)]
        result = service.answer("mallory", f"bad-{i}", make_payload())
        assert isinstance(result, Rejection)
        assert result.code == code.value
    assert service.account_stats("mallory").used == 2
    after = answer_valid(service, "after", valid(2))
    assert isinstance(after, Answer)
    np.testing.assert_array_equal(after.outputs, before.outputs)
    assert service.account_stats("mallory").used == 4


HUGE_BATCH = 10**8
"""a zero-stride view of this many digits images is 25.6 GB if anything copies it"""
COPY_ALLOWANCE = 16 * 2**20
"""memory a refusal may allocate (messages, bookkeeping): far below any copy"""


def resident_bytes() -> int:
    """This process's resident memory now (torch allocations are invisible to tracemalloc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def huge_views() -> list[tuple[str, Any, str, tuple[str, ...]]]:
    """(id, oversized zero-stride view, expected code, words the message must name)."""
    one = np.zeros((1, *SHAPE), np.float32)
    pixel = np.zeros((1, 1, 1, 1), np.float32)
    return [
        ("np_batch", np.broadcast_to(one, (HUGE_BATCH, *SHAPE)), "batch_too_large",
         ("1024", str(HUGE_BATCH))),
        ("np_sample", np.broadcast_to(pixel, (2, 1, 10**5, 10**5)), "shape",
         ("1, 8, 8", str(10**5))),
        ("torch_batch", torch.from_numpy(one).expand(HUGE_BATCH, *SHAPE), "batch_too_large",
         ("1024", str(HUGE_BATCH))),
        ("torch_sample", torch.from_numpy(pixel).expand(2, 1, 10**5, 10**5), "shape",
         ("1, 8, 8", str(10**5))),
    ]  # fmt: skip


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", range(4), ids=[c[0] for c in huge_views()])
def test_Q2_oversized_payload_rejected_before_touching_data(
    service: VictimService, case: int
) -> None:
    """Q2: views of 25-80 GB are refused on their shape alone, through the service and through
    the oracle, without building a tensor (no allocation beyond a few MB is traced, and it is
    fast); the message names what was expected and what arrived."""
    _, huge, code, named = huge_views()[case]
    oracle = open_oracle(service, "mallory", 10)
    rss_before = resident_bytes()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        result = service.answer("mallory", "q0", huge)
        with pytest.raises(InvalidQuery) as info:
            oracle.query(huge)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = resident_bytes() - rss_before
    name = huge_views()[case][0]
    print(f"Q2 {name}: refused twice in {elapsed * 1e3:.2f} ms, {peak} B traced, RSS +{grown} B")
    assert elapsed < 1.0
    assert peak < COPY_ALLOWANCE, f"{peak} bytes allocated while refusing a view"
    assert grown < COPY_ALLOWANCE, f"resident memory grew by {grown} bytes"
    assert isinstance(result, Rejection) and result.code == code
    assert info.value.code == code and info.value.message == result.message
    assert all(word in result.message for word in named), result.message
    assert_uncharged(service, oracle, "mallory")


def test_Q2_error_messages_name_expected_and_got(service: VictimService) -> None:
    oracle = open_oracle(service, "mallory", 10)
    with pytest.raises(InvalidQuery, match=r"float32.*float64"):
        oracle.query(valid().astype(np.float64))
    with pytest.raises(InvalidQuery, match=r"\[B, 1, 8, 8\].*\[4, 1, 8, 9\]"):
        oracle.query(np.zeros((4, 1, 8, 9), np.float32))


def test_tensor_that_requires_grad_is_served_through_the_oracle(service: VictimService) -> None:
    oracle = open_oracle(service, "alice", 10)
    x = torch.from_numpy(valid(2)).requires_grad_(True)
    assert oracle.query(x).shape == (2, 10)
    assert oracle.used == 2


def test_bfloat16_tensor_is_rejected_as_dtype(service: VictimService) -> None:
    oracle = open_oracle(service, "mallory", 10)
    with pytest.raises(InvalidQuery) as info:
        oracle.query(torch.zeros(2, *SHAPE, dtype=torch.bfloat16))
    assert info.value.code is QueryErrorCode.DTYPE
    assert_uncharged(service, oracle, "mallory")


def test_service_answer_never_raises_for_grad_tensor(service: VictimService) -> None:
    service.open_account("alice", 10)
    result = service.answer("alice", "q0", torch.from_numpy(valid(2)).requires_grad_(True))
    assert isinstance(result, Answer | Rejection)


def test_masked_array_with_hidden_nan_is_rejected(service: VictimService) -> None:
    service.open_account("mallory", 10)
    payload = np.ma.masked_invalid(with_value(np.nan))
    result = service.answer("mallory", "q0", payload)
    assert isinstance(result, Rejection)
    assert service.account_stats("mallory").used == 0


# ---- budget ----------------------------------------------------------------------------------


def test_B3_batch_crossing_the_limit_is_rejected_whole(service: VictimService) -> None:
    oracle = open_oracle(service, "alice", 10)
    with pytest.raises(BudgetExhausted) as info:
        oracle.query(torch.from_numpy(valid(11)))
    assert (info.value.requested, info.value.remaining) == (11, 10)
    assert_uncharged(service, oracle, "alice")

    assert oracle.query(torch.from_numpy(valid(4))).shape == (4, 10)
    assert oracle.used == 4 and oracle.remaining == 6
    with pytest.raises(BudgetExhausted) as info:
        oracle.query(torch.from_numpy(valid(7)))
    assert (info.value.requested, info.value.remaining) == (7, 6)
    assert oracle.used == 4 == service.account_stats("alice").used

    assert oracle.query(torch.from_numpy(valid(6))).shape == (6, 10)  # exactly to zero
    assert oracle.used == 10 and oracle.remaining == 0
    assert service.account_status("alice").remaining == 0
    with pytest.raises(BudgetExhausted) as info:
        oracle.query(torch.from_numpy(valid(1)))
    assert (info.value.requested, info.value.remaining) == (1, 0)
    stats = service.account_stats("alice")
    assert (stats.used, stats.batches) == (10, 2)


def test_budget_rejection_as_value(service: VictimService) -> None:
    service.open_account("alice", 3)
    result = service.answer("alice", "q0", valid(4))
    assert isinstance(result, Rejection)
    assert (result.code, result.requested, result.remaining) == ("budget_exhausted", 4, 3)
    assert isinstance(result.to_error(), BudgetExhausted)
    assert service.account_stats("alice").used == 0


def test_malformed_query_with_no_budget_left_is_still_invalid(service: VictimService) -> None:
    oracle = open_oracle(service, "alice", 0)
    with pytest.raises(InvalidQuery) as info:
        oracle.query(np.zeros((2, *SHAPE), np.float64))
    assert info.value.code is QueryErrorCode.DTYPE
    with pytest.raises(BudgetExhausted):
        oracle.query(torch.from_numpy(valid(1)))
    assert service.account_stats("alice").used == 0


def test_reused_query_id_with_other_inputs_is_refused_uncharged(service: VictimService) -> None:
    service.open_account("alice", 10)
    assert isinstance(service.answer("alice", "q0", valid(2)), Answer)
    reused = service.answer("alice", "q0", valid(2, seed=7))
    assert isinstance(reused, Rejection) and reused.code == QueryErrorCode.QUERY_ID_REUSED
    assert service.account_stats("alice").used == 2


def test_two_oracles_of_one_attacker_never_share_answers(service: VictimService) -> None:
    first = open_oracle(service, "alice", 10)
    second = Oracle(service, "alice")
    a = first.query(torch.from_numpy(valid(2)))
    b = second.query(torch.from_numpy(valid(2, seed=3)))
    assert not torch.equal(a, b)
    assert service.account_stats("alice").used == 4


def test_every_answered_query_id_stays_replayable(service: VictimService) -> None:
    """The ledger keeps every answer (not a window of recent ones), so a retry however late
    is answered from it and charged once."""
    service.open_account("alice", 500)
    first = service.answer("alice", "q0", valid(1, seed=0))
    for seed in range(1, 200):
        assert isinstance(service.answer("alice", f"q{seed}", valid(1, seed=seed)), Answer)
    again = service.answer("alice", "q0", valid(1, seed=0))
    assert isinstance(first, Answer) and isinstance(again, Answer)
    np.testing.assert_array_equal(first.outputs, again.outputs)
    assert service.account_stats("alice").used == 200
    assert service.audit("alice").queries == 200


def test_replayed_query_id_answered_from_ledger_and_charged_once(service: VictimService) -> None:
    service.open_account("alice", 10)
    x = valid(4)
    first = service.answer("alice", "q0", x)
    second = service.answer("alice", "q0", x)
    assert isinstance(first, Answer) and isinstance(second, Answer)
    np.testing.assert_array_equal(first.outputs, second.outputs)
    assert (second.used, second.remaining) == (4, 6)
    stats = service.account_stats("alice")
    assert (stats.used, stats.batches) == (4, 1)
    # A retry after the budget is spent still gets its recorded answer, free of charge.
    assert isinstance(service.answer("alice", "q1", valid(6, seed=1)), Answer)
    third = service.answer("alice", "q0", x)
    assert isinstance(third, Answer)
    np.testing.assert_array_equal(third.outputs, first.outputs)
    assert service.account_stats("alice").used == 10


def test_query_ids_are_per_attacker(service: VictimService) -> None:
    service.open_account("alice", 10)
    service.open_account("bob", 10)
    a = service.answer("alice", "q0", valid(2, seed=1))
    b = service.answer("bob", "q0", valid(2, seed=2))
    assert isinstance(a, Answer) and isinstance(b, Answer)
    assert not np.array_equal(a.outputs, b.outputs)
    assert service.account_stats("alice").used == 2 == service.account_stats("bob").used


def test_unknown_attacker_rejected(service: VictimService) -> None:
    service.open_account("alice", 10)
    ghost = Oracle(service, "ghost")
    with pytest.raises(InvalidQuery) as info:
        ghost.query(torch.from_numpy(valid(2)))
    assert info.value.code is QueryErrorCode.UNKNOWN_ATTACKER
    result = service.answer("ghost", "q0", valid(2))
    assert isinstance(result, Rejection) and result.code == "unknown_attacker"
    assert service.account_stats("alice").used == 0


# ---- Q3: property-based fuzz -----------------------------------------------------------------

SPECIAL_FLOATS = [
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    1.0,
    1e-45,  # float32 denormal
    1e-40,
    -1e-45,
    np.nextafter(1.0, 2.0),
    1.5,
    -0.5,
    255.0,
    3.4e38,
]


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["well_shaped", "well_shaped", "random_shape"]))
    if kind == "well_shaped":
        batch = draw(st.integers(0, 12))
        dtype: Any = draw(st.sampled_from([np.float32, np.float32, np.float32, np.float64]))
        shape: tuple[int, ...] = (batch, *SHAPE)
    else:
        dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8]))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9))
    if np.issubdtype(dtype, np.floating):
        width: Literal[32, 64] = 32 if dtype == np.float32 else 64
        clean = st.floats(0.0, 1.0, width=width, allow_subnormal=True)
        dirty = st.one_of(clean, st.sampled_from(SPECIAL_FLOATS).map(dtype))
        elements = clean if draw(st.integers(0, 3)) > 0 else dirty  # mostly clean
        array = draw(hnp.arrays(dtype, shape, elements=elements))
    else:
        array = draw(hnp.arrays(dtype, shape))
    if draw(st.integers(0, 3)) == 0:
        return torch.from_numpy(array)
    return array


def expected_outcome(x: Any, max_batch: int = 1024) -> str:
    """The contract, computed independently: 'invalid', or 'valid' for a well-formed batch."""
    if not isinstance(x, np.ndarray | torch.Tensor):
        return "invalid"
    a = x.numpy() if isinstance(x, torch.Tensor) else x
    if a.dtype != np.float32 or a.ndim != 4 or a.shape[1:] != SHAPE:
        return "invalid"
    if not 1 <= a.shape[0] <= max_batch:
        return "invalid"
    with np.errstate(invalid="ignore"):
        ok = bool(np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all())
    return "valid" if ok else "invalid"


FUZZ_IDS = itertools.count()


FUZZ_CHAINS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in DEFENSES.names()},
    # chains: noise before a label-only answer, and perturbation stacked on perturbation
    "random_noise+label_only": ("random_noise", "label_only"),
    "reverse_sigmoid+random_noise+rounding": ("reverse_sigmoid", "random_noise", "rounding"),
    "mad+top_k": ("mad", "top_k"),
}
"""every registered defense alone, and chains mixing stochastic and label-only defenses"""


@pytest.fixture(scope="module")
def fuzz_services(make_service: ServiceFactory) -> dict[str, VictimService]:
    return {label: make_service(list(chain)) for label, chain in FUZZ_CHAINS.items()}


@settings(
    max_examples=300,
    deadline=None,
    database=None,  # write nothing outside tmp dirs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    defense=st.sampled_from(sorted(FUZZ_CHAINS)),
    budget=st.integers(0, 60),
    batches=st.lists(payloads(), min_size=1, max_size=3),
)
def test_Q3_fuzzed_queries_yield_valid_output_or_typed_error(
    fuzz_services: dict[str, VictimService],
    digits_data: DataSplits,
    defense: str,
    budget: int,
    batches: list[Any],
) -> None:
    service = fuzz_services[defense]
    attacker = f"fuzz-{next(FUZZ_IDS)}"  # a fresh account per example
    oracle = open_oracle(service, attacker, budget)
    answered = 0
    for x in batches:
        outcome = expected_outcome(x)
        try:
            out = oracle.query(x)
        except InvalidQuery:
            assert outcome == "invalid", "a valid batch was refused"
            event("invalid")
            continue
        except BudgetExhausted as exc:
            assert outcome == "valid", "an invalid batch reached the budget check"
            assert exc.requested == int(x.shape[0]) > budget - answered == exc.remaining
            continue
        assert outcome == "valid", "an invalid batch was answered"
        batch = int(x.shape[0])
        assert out.shape == (batch, digits_data.num_classes)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert (out >= 0).all()
        torch.testing.assert_close(out.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
        if oracle.output_spec.label_only:  # one-hot rows
            assert ((out == 0) | (out == 1)).all()
        event("answered, label-only" if oracle.output_spec.label_only else "answered")
        answered += batch
    assert answered <= budget
    assert oracle.used == answered == service.account_stats(attacker).used
