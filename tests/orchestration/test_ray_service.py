"""The victim service hosted in a Ray actor: same answers and errors as in process, exact ledgers
under concurrent attackers (B1, B3), typed errors returned through Ray (Q1 through the proxy)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

import agents  # noqa: F401
from arena.data import DataSplits, load_dataset
from arena.errors import BudgetExhausted, InvalidQuery, QueryErrorCode
from arena.oracle import InputSpec, Oracle
from arena.referee import MatchData, play_match, referee_match
from arena.specs import MatchSpec, PluginSpec, VictimSpec
from arena.victims import load_or_train
from orchestration.ray_service import RayServiceProxy, start_victim_service

pytestmark = pytest.mark.ray

VICTIM = VictimSpec(dataset="digits", arch="mlp", epochs=10, lr=3e-3)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="module")
def service(ray_session: None, digits: DataSplits, cache_dir: Path) -> Any:
    victim = load_or_train(VICTIM, digits, cache_dir)
    handle = start_victim_service(
        VICTIM,
        (PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2}),),
        ray.put(victim.model.state_dict()),
        InputSpec(shape=digits.input_shape, max_batch=64),
        digits.num_classes,
    )
    yield handle
    ray.kill(handle)


def test_ray_oracle_rejects_malformed_queries_and_charges_nothing(service: Any) -> None:
    proxy = RayServiceProxy(service)
    proxy.open_account("malformed", 50)
    oracle = Oracle(proxy, "malformed")
    bad: list[tuple[Any, QueryErrorCode]] = [
        (None, QueryErrorCode.NOT_ARRAY),
        ([[0.0] * 64], QueryErrorCode.NOT_ARRAY),
        (torch.zeros(2, 1, 8, 8, dtype=torch.float64), QueryErrorCode.DTYPE),
        (torch.zeros(2, 8, 8), QueryErrorCode.SHAPE),
        (torch.zeros(0, 1, 8, 8), QueryErrorCode.EMPTY),
        (torch.zeros(65, 1, 8, 8), QueryErrorCode.BATCH_TOO_LARGE),
        (torch.full((2, 1, 8, 8), float("nan")), QueryErrorCode.NON_FINITE),
        (torch.full((2, 1, 8, 8), 2.0), QueryErrorCode.OUT_OF_RANGE),
    ]
    for x, code in bad:
        with pytest.raises(InvalidQuery) as info:
            oracle.query(x)
        assert info.value.code == code
    assert oracle.used == 0 and proxy.account_stats("malformed").used == 0
    with pytest.raises(BudgetExhausted):
        oracle.query(torch.zeros(51, 1, 8, 8))
    assert proxy.account_stats("malformed").used == 0
    out = oracle.query(torch.rand(50, 1, 8, 8))
    assert out.shape == (50, 10) and torch.allclose(out.sum(dim=1), torch.ones(50), atol=1e-5)
    assert oracle.remaining == 0


@ray.remote(num_cpus=0)
def _hammer(handle: Any, attacker: str, batch: int, rounds: int) -> int:
    """Send `rounds` batches; return how many queries were answered."""
    oracle = Oracle(RayServiceProxy(handle), attacker)
    answered = 0
    for _ in range(rounds):
        with contextlib.suppress(BudgetExhausted):
            answered += int(oracle.query(torch.rand(batch, 1, 8, 8)).shape[0])
    return answered


def test_B1_concurrent_callers_are_charged_exactly(service: Any) -> None:
    proxy = RayServiceProxy(service)
    for i in range(8):
        proxy.open_account(f"parallel-{i}", 100)
    # 8 attackers at once, each asking for 6 x 30 = 180 against a budget of 100
    answered = ray.get([_hammer.remote(service, f"parallel-{i}", 30, 6) for i in range(8)])
    assert answered == [90] * 8  # the 4th batch of 30 crosses 100 and is refused whole (B3)
    assert all(proxy.account_stats(f"parallel-{i}").used == 90 for i in range(8))


def test_ray_and_in_process_matches_are_identical(
    service: Any, digits: DataSplits, cache_dir: Path
) -> None:
    spec = MatchSpec(
        victim=VICTIM,
        defenses=(PluginSpec(name="reverse_sigmoid", params={"beta": 0.5, "gamma": 0.2}),),
        attack=PluginSpec(name="knockoff", params={"epochs": 3}),
        budget=128,
    )
    local = play_match(spec, digits, cache_dir)
    remote = referee_match(spec, RayServiceProxy(service), MatchData.from_splits(digits))
    for field in ("stolen_accuracy", "fidelity", "utility", "perturbation_l1", "queries_used"):
        assert getattr(local, field) == getattr(remote, field), field
    assert np.isclose(local.perturbation_kl, remote.perturbation_kl)
