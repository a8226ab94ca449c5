"""Shared fixtures for the arena and agents tests: the digits data, one cached victim, a cached
model zoo, services.

Everything runs in this process on the CPU with one torch thread (the machine has two cores and
the whole suite must stay well under 20 minutes: tests that play matches pin small ``epochs``,
since the thieves' default recipe trains at least 4000 steps).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import hypothesis
import hypothesis.configuration
import pytest
import torch
from arena_testkit import ZOO_LATENCY_MS, DefenseArg, ServiceFactory, as_plugin_specs, match_spec

import agents  # noqa: F401  (registers the built-in attacks)
from arena.data import DataSplits, load_dataset
from arena.defenses.chain import build_chain
from arena.oracle import InputSpec
from arena.plugins import load_installed_plugins
from arena.service import VictimService
from arena.service_factory import build_service
from arena.specs import VictimSpec
from arena.victims import TrainedVictim, build_zoo, load_or_train, save_victim
from arena.zoo import ZooModule, ZooProfile

# installed plug-ins (the example package scripts/test.sh installs) are registered before any
# test module reads the registries, so the conformance tests parametrised over every registered
# name always include them, whichever test happens to load them first
load_installed_plugins()

torch.set_num_threads(1)

# Hypothesis keeps its example database and caches in a temporary folder: its default,
# ``.hypothesis/`` in the working directory, would be left in the checkout (tests write only
# under temporary folders)
hypothesis.configuration.set_hypothesis_home_dir(tempfile.mkdtemp(prefix="arena-hypothesis-"))
hypothesis.settings.register_profile("arena", database=None)
hypothesis.settings.load_profile("arena")


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
    (:func:`arena.service_factory.build_service`, loading the cached victim); with an explicit
    ``max_batch`` the same cached model is served under a custom input spec.
    """

    def factory(defenses: Sequence[DefenseArg] = (), max_batch: int | None = None) -> VictimService:
        if max_batch is None:
            spec = match_spec(digits_victim_spec, defenses)
            return build_service(spec.victim, spec.defenses, digits_data, victim_cache)
        chain = build_chain(as_plugin_specs(defenses))
        input_spec = InputSpec(shape=digits_data.input_shape, max_batch=max_batch)
        return VictimService(digits_victim.model, chain, input_spec, digits_data.num_classes)

    return factory


@pytest.fixture(scope="session")
def digits_zoo_spec(digits_victim_spec: VictimSpec) -> VictimSpec:
    """A digits zoo of three members of clearly different accuracy (about 0.15, 0.88 and 0.96:
    an under-trained softmax regression, a softmax regression, the digits MLP victim), the
    middle one the reference."""
    weak = VictimSpec(dataset="digits", arch="softmax_regression", epochs=2, train_size=300)
    linear = VictimSpec(dataset="digits", arch="softmax_regression", epochs=20)
    return VictimSpec(
        dataset="digits", arch="zoo", members=(weak, linear, digits_victim_spec), reference=1
    )


@pytest.fixture(scope="session")
def digits_zoo(
    digits_zoo_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
    digits_victim: TrainedVictim,
) -> TrainedVictim:
    """The digits zoo, built by :func:`arena.victims.build_zoo` and cached in ``victim_cache``
    with its latencies pinned to :data:`ZOO_LATENCY_MS`.

    Measured, the two softmax regressions are equally fast (~0.03 ms against the MLP's ~0.1 ms),
    so which of them serves the low targets would be decided by timing noise; pinned, every
    member is cheaper than the more accurate ones (a Pareto zoo) and each serves an interval of
    accuracy targets, the same in every run. Every service and match then loads this entry.
    """
    built = build_zoo(digits_zoo_spec, digits_data, victim_cache)
    assert isinstance(built.model, ZooModule)
    measured = built.model.profile()
    assert measured.accuracy[0] + 0.3 < measured.accuracy[1] < measured.accuracy[2] - 0.03
    members = [built.model.member(i) for i in range(measured.size)]
    pinned = ZooModule(members, ZooProfile(measured.accuracy, ZOO_LATENCY_MS, measured.reference))
    save_victim(
        TrainedVictim(digits_zoo_spec, pinned.eval(), built.test_accuracy, 0.0, False),
        victim_cache,
    )
    loaded = load_or_train(digits_zoo_spec, digits_data, victim_cache)
    assert loaded.from_cache
    return loaded


@pytest.fixture(scope="session")
def make_zoo_service(
    digits_zoo: TrainedVictim,
    digits_zoo_spec: VictimSpec,
    digits_data: DataSplits,
    victim_cache: Path,
) -> ServiceFactory:
    """``make_zoo_service(defenses=())``: a fresh in-process service of the digits zoo, built as
    the referee builds it."""

    def factory(defenses: Sequence[DefenseArg] = ()) -> VictimService:
        return build_service(digits_zoo_spec, as_plugin_specs(defenses), digits_data, victim_cache)

    return factory
