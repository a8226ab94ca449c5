"""Shared fixtures for the arena and agents tests: the digits data, one cached victim, services.

Everything runs in this process on the CPU with one torch thread (the machine has two cores and
the suite must stay well under a minute).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from arena_testkit import DefenseArg, ServiceFactory, as_plugin_specs, match_spec

import agents  # noqa: F401  (registers the built-in attacks)
from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.oracle import InputSpec
from arena.referee import build_service
from arena.service import VictimService
from arena.specs import VictimSpec
from arena.victims import TrainedVictim, load_or_train

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_arena_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep every default cache (``ARENA_HOME``) out of the working tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARENA_HOME", str(tmp_path_factory.mktemp("arena_home")))
        yield


@pytest.fixture(scope="session")
def digits_data() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def victim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("victims")


@pytest.fixture(scope="session")
def digits_victim_spec() -> VictimSpec:
    return VictimSpec(dataset="digits", arch="mlp", epochs=20)


@pytest.fixture(scope="session")
def digits_victim(
    digits_victim_spec: VictimSpec, digits_data: DataSplits, victim_cache: Path
) -> TrainedVictim:
    """The digits MLP victim, trained once per session and cached in ``victim_cache``."""
    return load_or_train(digits_victim_spec, digits_data, victim_cache)


@pytest.fixture(scope="session")
def make_service(
    digits_victim: TrainedVictim,
    digits_victim_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> ServiceFactory:
    """``make_service(defenses=(), max_batch=None)``: a fresh in-process victim service.

    With the default ``max_batch`` it is built exactly as the referee builds it
    (:func:`arena.referee.build_service`, loading the cached victim); with an explicit
    ``max_batch`` the same cached model is served under a custom input spec.
    """

    def factory(defenses: Sequence[DefenseArg] = (), max_batch: int | None = None) -> VictimService:
        if max_batch is None:
            spec = match_spec(digits_victim_spec, defenses)
            return build_service(spec, digits_data, victim_cache)
        chain = build_chain(as_plugin_specs(defenses))
        input_spec = InputSpec(shape=digits_data.input_shape, max_batch=max_batch)
        return VictimService(digits_victim.model, chain, input_spec, digits_data.num_classes)

    return factory
