"""Victim services as Ray actors, and a proxy that gives them the in-process service interface.

The actor hosts the very same :class:`arena.service.VictimService`; calls are sequential inside
the actor, so each ledger is exact however many attackers query at once. Rejections come back as
values (cheaper than exceptions through Ray) and the oracle raises them client-side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.actor import ActorHandle

from arena.data import DataSplits
from arena.defenses.base import OwnershipKeys
from arena.defenses.chain import build_chain
from arena.oracle import AccountStatus, Answer, InputSpec, OutputSpec, Rejection
from arena.service import AccountStats, ReferenceOutputs, VictimService
from arena.specs import PluginSpec, VictimSpec
from arena.victims import build_victim_model, defended_model
from arena.zoo import ZooProfile

SERVICE_NAMESPACE = "model-stealing-arena"
"""Ray namespace of named victim-service actors (find leftovers with ``list_named_actors``)."""


class HostedVictimService(VictimService):
    """A victim service built inside its Ray actor from the victim's weights."""

    def __init__(
        self,
        victim: VictimSpec,
        defenses: tuple[PluginSpec, ...],
        state: dict[str, torch.Tensor],
        input_spec: InputSpec,
        num_classes: int,
        threads: int = 1,
        data: DataSplits | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        gpus = ray.get_gpu_ids()
        device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        model = build_victim_model(
            victim, input_shape=input_spec.shape, num_classes=num_classes, state=state
        )
        chain = build_chain(defenses)
        trained = model
        if chain.needs_preparation:
            if data is None:
                raise ValueError("defenses that prepare models need the victim's data")
            model = defended_model(victim, model, chain, data, cache_dir)
        undefended = None if model is trained else trained
        super().__init__(model, chain, input_spec, num_classes, device, undefended)


def start_victim_service(
    victim: VictimSpec,
    defenses: tuple[PluginSpec, ...],
    state: Any,
    input_spec: InputSpec,
    num_classes: int,
    num_cpus: float = 0,
    num_gpus: float = 0,
    name: str | None = None,
    data: Any = None,
    cache_dir: Path | None = None,
) -> ActorHandle[Any]:
    """Start one victim-service actor; ``state`` (and ``data``, needed only by defenses that
    prepare models) may be ObjectRefs."""
    actor_cls: Any = ray.remote(HostedVictimService)
    actor_cls = actor_cls.options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_concurrency=1,
        name=name,
        namespace=SERVICE_NAMESPACE if name else None,
    )
    threads = max(1, int(num_cpus)) if num_cpus else 1
    handle: ActorHandle[Any] = actor_cls.remote(
        victim, defenses, state, input_spec, num_classes, threads, data, cache_dir
    )
    return handle


class RayServiceProxy:
    """Implements the referee's service interface by calling a victim-service actor."""

    def __init__(self, handle: ActorHandle[Any], timeout_s: float = 300.0) -> None:
        self._handle = handle
        self._timeout = timeout_s
        self._spec: tuple[InputSpec, OutputSpec] | None = None

    def _call(self, method: str, *args: Any) -> Any:
        return ray.get(getattr(self._handle, method).remote(*args), timeout=self._timeout)

    def answer(
        self, attacker_id: str, query_id: str, x: Any, targets: Any = None
    ) -> Answer | Rejection:
        result: Answer | Rejection = self._call("answer", attacker_id, query_id, x, targets)
        return result

    def ownership_keys(self, attacker_id: str) -> list[tuple[int, OwnershipKeys]]:
        keys: list[tuple[int, OwnershipKeys]] = self._call("ownership_keys", attacker_id)
        return keys

    def zoo_profile(self) -> ZooProfile | None:
        profile: ZooProfile | None = self._call("zoo_profile")
        return profile

    def account_status(self, attacker_id: str) -> AccountStatus:
        status: AccountStatus = self._call("account_status", attacker_id)
        return status

    def public_spec(self) -> tuple[InputSpec, OutputSpec]:
        if self._spec is None:
            self._spec = self._call("public_spec")
        return self._spec

    def open_account(self, attacker_id: str, budget: int) -> None:
        self._call("open_account", attacker_id, budget)

    def account_stats(self, attacker_id: str) -> AccountStats:
        stats: AccountStats = self._call("account_stats", attacker_id)
        return stats

    def reference_outputs(self, x: np.ndarray | torch.Tensor) -> ReferenceOutputs:
        outputs: ReferenceOutputs = self._call("reference_outputs", x)
        return outputs
