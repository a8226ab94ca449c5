"""Helpers shared by the arena/agents tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch

from arena.data import DataSplits
from arena.knowledge import Knowledge
from arena.oracle import Oracle
from arena.record import MatchResult
from arena.service import VictimService
from arena.specs import MatchSpec, PluginSpec, VictimSpec

DefenseArg: TypeAlias = str | PluginSpec
ServiceFactory: TypeAlias = Callable[..., VictimService]
"""``make_service(defenses=(), max_batch=None)`` (the conftest fixture)."""

ZOO_LATENCY_MS = (0.02, 0.05, 0.1)
"""the latencies the test zoo's members are pinned to, in member order (conftest ``digits_zoo``)"""


def as_plugin_specs(defenses: Sequence[DefenseArg]) -> tuple[PluginSpec, ...]:
    return tuple(d if isinstance(d, PluginSpec) else PluginSpec(name=d) for d in defenses)


def match_spec(
    victim: VictimSpec,
    defenses: Sequence[DefenseArg] = (),
    attack: str = "knockoff",
    attack_params: dict[str, object] | None = None,
    budget: int = 300,
    seed: int = 0,
) -> MatchSpec:
    return MatchSpec(
        victim=victim,
        defenses=as_plugin_specs(defenses),
        attack=PluginSpec(name=attack, params=attack_params or {}),
        budget=budget,
        seed=seed,
    )


def open_oracle(service: VictimService, attacker_id: str, budget: int) -> Oracle:
    """Open ``attacker_id``'s account with ``budget`` and return the attacker's oracle."""
    service.open_account(attacker_id, budget)
    return Oracle(service, attacker_id)


def pool_knowledge(data: DataSplits, pool: torch.Tensor | None = None) -> Knowledge:
    """What the referee grants a pool thief on ``data``: the attacker pool (or ``pool``) and an
    MLP substitute."""
    return Knowledge(
        pool=data.attacker_pool.x if pool is None else pool,
        pool_name="in_distribution",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        substitute_arch="mlp",
    )


def record(defense: str, attack: str, budget: int, stolen: float, **extra: Any) -> MatchResult:
    """A match record with neutral figures (a digits MLP, nothing perturbed), for tests of what
    reads records: the leaderboard, budget curves, plots; ``extra`` overrides any field."""
    fields: dict[str, Any] = {
        "match_key": f"{defense}-{attack}-{budget}-{extra.get('seed', 0)}",
        "victim_key": "v",
        "dataset": "digits",
        "victim_arch": "mlp",
        "substitute_arch": "mlp",
        "defense": defense,
        "attack": attack,
        "attack_name": attack,
        "budget": budget,
        "seed": 0,
        "trusted": True,
        "victim_accuracy": 0.9,
        "utility": 0.9,
        "stolen_accuracy": stolen,
        "fidelity": stolen,
        "queries_used": budget,
        "perturbation_l1": 0.0,
        "perturbation_kl": 0.0,
        "test_perturbation_l1": 0.0,
        "test_perturbation_kl": 0.0,
        "defense_us_per_query": 0.0,
        "latency_ratio": 1.0,
        "attack_seconds": 1.0,
        "match_seconds": 1.0,
    }
    return MatchResult(**{**fields, **extra})
