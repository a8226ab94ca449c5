"""Victim services as Ray actors, and a proxy that gives them the in-process service interface.

The actor hosts the very same :class:`arena.service.VictimService`; calls are sequential inside
the actor, so each ledger is exact however many attackers query at once. Rejections come back as
values (cheaper than exceptions through Ray) and the oracle raises them client-side.

Faults: the actor restarts up to ``max_restarts`` times (a crash, a lost node, a hang the proxy
gave up on) and Ray retries the calls in flight. Retries are at-least-once, so the ledger file
(:class:`arena.ledger.Ledger`) is what keeps charges exact: the restarted service reopens it and
answers a retried query id from it. A full queue (``max_pending_calls``) is a typed ``overloaded``
rejection, a call that outlives its timeout a typed ``unavailable`` one; neither charges.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.actor import ActorHandle
from torch import nn

from arena.data import DataSplits
from arena.defenses.base import OwnershipEvidence
from arena.errors import RejectionCode
from arena.ledger import AuditDigest, Ledger
from arena.oracle import (
    AccountStatus,
    Answer,
    InputSpec,
    OutputSpec,
    PendingAnswers,
    Rejection,
    check_structure,
)
from arena.plugins import PluginSource, ensure_plugins
from arena.service import AccountStats, ReferenceOutputs, VictimService
from arena.service_factory import served_models
from arena.specs import PluginSpec, VictimSpec
from arena.victims import build_victim_model
from arena.work import WorkChallenge, WorkProof
from arena.zoo import ZooProfile
from orchestration.resources import assigned_device

_log = logging.getLogger(__name__)

RESTART_GRACE_S = 60.0
"""after restarting a hung victim, further timeouts within this many seconds do not restart it
again (it may still be starting up)"""

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
        ledger_path: Path | None = None,
        plugins: tuple[PluginSource, ...] = (),
    ) -> None:
        ensure_plugins(plugins)
        torch.set_num_threads(max(1, threads))
        device = str(assigned_device())  # CUDA when the actor was given ray.gpus_per_victim
        trained = build_victim_model(
            victim, input_shape=input_spec.shape, num_classes=num_classes, state=state
        )
        served = served_models(victim, trained, defenses, data, cache_dir)
        ledger = Ledger(ledger_path)
        super().__init__(
            served.model, served.chain, input_spec, num_classes, device, served.undefended, ledger
        )

    def process_id(self) -> int:
        """The actor's process (operators and fault tests use it to find, or kill, the victim)."""
        return os.getpid()


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
    ledger_path: Path | None = None,
    max_restarts: int = 0,
    max_pending_calls: int = -1,
    service_cls: type[HostedVictimService] = HostedVictimService,
    plugins: tuple[PluginSource, ...] = (),
    **options: Any,
) -> ActorHandle[Any]:
    """Start one victim-service actor; ``state`` (and ``data``, needed only by defenses that
    prepare models) may be ObjectRefs.

    ``ledger_path``: the ledger file a restarted actor reopens (without one a restart would
    start from empty accounts, so restarts are refused). ``max_pending_calls``: the queue cap
    (-1: none). ``service_cls`` and ``options`` (Ray actor options, e.g. a node's resources)
    let fault tests and clusters place or instrument the actor. ``plugins``: what the actor
    imports before building the victim (:func:`arena.plugins.sources_for`)."""
    if max_restarts and ledger_path is None:
        raise ValueError("a victim service that restarts needs a ledger file to restore")
    actor_cls: Any = ray.remote(service_cls)
    actor_cls = actor_cls.options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_concurrency=1,
        name=name,
        namespace=SERVICE_NAMESPACE if name else None,
        max_restarts=max_restarts,
        # calls in flight when the actor died run again on the restarted one (idempotent ledger)
        max_task_retries=-1 if max_restarts else 0,
        max_pending_calls=max_pending_calls,
        **options,
    )
    threads = max(1, int(num_cpus)) if num_cpus else 1
    handle: ActorHandle[Any] = actor_cls.remote(
        victim,
        defenses,
        state,
        input_spec,
        num_classes,
        threads,
        data,
        cache_dir,
        ledger_path,
        plugins,
    )
    return handle


class RayServiceProxy:
    """Implements the referee's service interface by calling a victim-service actor.

    Faults become typed rejections for ``answer`` (what attackers call) and
    :class:`~arena.errors.VictimUnavailable` / :class:`~arena.errors.Overloaded` for the rest. A
    call that outlives ``timeout_s`` is abandoned and the actor is killed so Ray restarts it
    (when it may restart) rather than leaving a hung victim in place."""

    def __init__(self, handle: ActorHandle[Any], timeout_s: float = 300.0) -> None:
        self._handle = handle
        self._timeout = timeout_s
        self._spec: tuple[InputSpec, OutputSpec] | None = None
        self._order_sensitive: bool | None = None
        self._killed_at: float | None = None

    def _call(self, method: str, *args: Any) -> Any:
        result = self._try_call(method, *args)
        if isinstance(result, Rejection):
            raise result.to_error()
        return result

    def _try_call(self, method: str, *args: Any) -> Any:
        return self._start_call(method, *args)()

    def _start_call(self, method: str, *args: Any) -> Callable[[], Any]:
        """Send one call now; the returned function waits for its result (faults as values)."""
        try:
            ref = getattr(self._handle, method).remote(*args)
        except ray.exceptions.PendingCallsLimitExceeded:
            full = Rejection(RejectionCode.OVERLOADED, "the victim's queue is full: retry later")
            return lambda: full
        return lambda: self._wait(method, ref)

    def _wait(self, method: str, ref: ray.ObjectRef[Any]) -> Any:
        try:
            return ray.get(ref, timeout=self._timeout)
        except ray.exceptions.GetTimeoutError:
            now = time.monotonic()
            if self._killed_at is None or now - self._killed_at > RESTART_GRACE_S:
                # a hung victim is restarted; one that is still restarting is left to finish
                _log.warning(
                    "victim call %s timed out after %.0f s: restarting it", method, self._timeout
                )
                ray.kill(self._handle, no_restart=False)
                self._killed_at = now
            return Rejection(
                RejectionCode.UNAVAILABLE, f"the victim did not answer within {self._timeout:g} s"
            )
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Rejection(RejectionCode.UNAVAILABLE, f"the victim service is down: {first}")

    def answer(
        self,
        attacker_id: str,
        query_id: str,
        x: Any,
        targets: Any = None,
        work: WorkProof | None = None,
    ) -> Answer | Rejection:
        """A batch whose type, rank, size or sample shape is wrong is refused here, with the
        victim's own check, before Ray would pickle it (a huge broadcast view would be copied
        whole); everything else is validated by the victim."""
        result: Answer | Rejection = self._send_answer(attacker_id, query_id, x, targets, work)()
        return result

    def submit(
        self, attacker_id: str, batches: list[tuple[str, Any]], targets: Any = None
    ) -> PendingAnswers:
        """Several batches in one call, without waiting (:class:`arena.oracle.PipelinedEndpoint`):
        the actor runs one call at a time, in the order one caller sent them, and answers a
        call's batches in order, so it charges them in order. A fault is the first batch's
        rejection (the oracle re-sends the rest by their query ids: none is charged twice)."""
        wait = self._start_call("answer_many", attacker_id, batches, targets)

        def results() -> list[Answer | Rejection]:
            answered: list[Answer | Rejection] | Rejection = wait()
            return [answered] if isinstance(answered, Rejection) else answered

        return results

    def pipelines(self) -> bool:
        """Not for a victim whose answers depend on each caller's order of batches: Ray keeps
        a caller's order, except for the calls it retries on a restarted actor."""
        if self._order_sensitive is None:
            self._order_sensitive = bool(self._call("order_sensitive"))
        return not self._order_sensitive

    def _send_answer(
        self, attacker_id: str, query_id: str, x: Any, targets: Any, work: WorkProof | None
    ) -> Callable[[], Answer | Rejection]:
        rejection = check_structure(x, self.public_spec()[0])
        if rejection is not None:
            return lambda: rejection
        return self._start_call("answer", attacker_id, query_id, x, targets, work)

    def work_challenge(self, attacker_id: str, query_id: str, batch: int) -> WorkChallenge | None:
        """The victim's proof-of-work challenge (kept in the actor: a restarted actor forgets it
        and the oracle asks again)."""
        challenge: WorkChallenge | None = self._call("work_challenge", attacker_id, query_id, batch)
        return challenge

    def audit(self, attacker_id: str) -> AuditDigest:
        digest: AuditDigest = self._call("audit", attacker_id)
        return digest

    def process_id(self) -> int:
        pid: int = self._call("process_id")
        return pid

    def ownership_keys(self, attacker_id: str) -> list[tuple[int, OwnershipEvidence]]:
        keys: list[tuple[int, OwnershipEvidence]] = self._call("ownership_keys", attacker_id)
        return keys

    def served_copy(self) -> nn.Module:
        model: nn.Module = self._call("served_copy")
        return model

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
