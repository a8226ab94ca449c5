"""The victim service: one victim model behind its defense chain, owning every attacker's ledger.

It is a plain class so a match can run in one process; ``orchestration`` hosts the same class in a
Ray actor. The query half (``answer``, ``account_status``, ``public_spec``) is what an
:class:`~arena.oracle.Oracle` talks to; the rest (opening accounts, per-account statistics,
reference outputs on the test set) is for the referee only.

Charging rules: a batch is validated, checked against a detector's refusal, against the
remaining budget and, when the chain asks for proof of work, against the challenge handed out
for its query id (:meth:`VictimService.work_challenge`; a valid proof is consumed), and charged
in the :class:`~arena.ledger.Ledger` *before* the model runs; a rejected or refused batch
charges nothing; a replayed ``(attacker, query id)`` returns the recorded answer without
charging again (and without new work). With a ledger file, a restarted service (a Ray actor
after a crash) reopens every account exactly where it was.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from arena.defenses.base import OwnershipEvidence
from arena.defenses.chain import DefenseChain
from arena.errors import RejectionCode
from arena.ledger import AuditDigest, Ledger, array_hash
from arena.metrics import exact_sum, kl_divergence, l1_distance
from arena.oracle import (
    AccountStatus,
    Answer,
    InputSpec,
    OracleEndpoint,
    OutputSpec,
    Rejection,
    validate_query,
)
from arena.targets import NO_TARGETS, Targets, parse_targets
from arena.work import WorkChallenge, WorkProof, verify
from arena.zoo import ZooModule, ZooProfile, select_member


@dataclass
class AccountStats:
    """Everything the service measured while serving one attacker."""

    budget: int
    used: int = 0
    batches: int = 0
    l1_sum: float = 0.0
    kl_sum: float = 0.0
    model_seconds: float = 0.0
    defense_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    """time spent in each defense of the chain, in chain order"""
    step_l1_sum: list[float] = field(default_factory=list)
    """summed L1 change each defense of the chain made to the answers"""
    detected_after: int | None = None
    """queries answered when a detector first flagged this caller; ``None`` if never"""
    refused_batches: int = 0
    """batches refused (uncharged) because a detector flagged this caller"""
    served_by: list[int] = field(default_factory=list)
    """model zoos: queries answered by each member, in member order (empty for one model)"""
    targets_met: int = 0
    """model zoos: queries answered by a member that meets the targets the caller stated"""
    work_queries: int = 0
    """proof of work: queries charged with a verified solution"""
    work_bits_sum: int = 0
    """their summed difficulty (leading zero bits per query)"""
    work_hashes_expected: int = 0
    """hashes their solutions took in expectation: the sum of ``2 ** bits`` per query"""


@dataclass(frozen=True)
class ReferenceOutputs:
    """The victim's answers on evaluation data, undefended and defended, and what they cost."""

    undefended: np.ndarray
    defended: np.ndarray
    model_seconds: float
    defense_seconds: float


REFERENCE_BATCH = 256
PENDING_CHALLENGES = 64
"""proof-of-work challenges kept per caller; older unanswered ones are forgotten"""


@dataclass
class _Account:
    stats: AccountStats
    defense_states: list[Any]
    rng: np.random.Generator
    """randomness of the defenses that perturb targets, keyed by the caller's identity"""

    def snapshot(self) -> dict[str, Any]:
        """What the ledger keeps of this account besides its charges (JSON)."""
        return {"stats": dataclasses.asdict(self.stats), "rng": self.rng.bit_generator.state}


class ServiceAPI(OracleEndpoint, Protocol):
    """A victim service as the referee sees it: the attacker's side (:class:`OracleEndpoint`,
    all an oracle may call) plus the trusted side (accounts, statistics, reference outputs,
    ownership keys, the audit digest). :class:`VictimService` implements it in process,
    ``orchestration.ray_service.RayServiceProxy`` for an actor; the HTTP endpoint serves any."""

    def open_account(self, attacker_id: str, budget: int) -> None: ...

    def account_stats(self, attacker_id: str) -> AccountStats: ...

    def reference_outputs(self, x: np.ndarray | torch.Tensor) -> ReferenceOutputs: ...

    def zoo_profile(self) -> ZooProfile | None: ...

    def ownership_keys(self, attacker_id: str) -> list[tuple[int, OwnershipEvidence]]: ...

    def audit(self, attacker_id: str) -> AuditDigest: ...

    def served_copy(self) -> nn.Module: ...


class VictimService:
    """Serves one victim behind one defense chain to any number of metered attackers.

    When the victim is a model zoo (:class:`arena.zoo.ZooModule`) each batch may carry
    :class:`~arena.targets.Targets` and is answered by the member the zoo selects for them
    (after the chain's target defenses); a single model refuses batches with targets.
    """

    def __init__(
        self,
        model: nn.Module,
        chain: DefenseChain,
        input_spec: InputSpec,
        num_classes: int,
        device: str = "cpu",
        undefended: nn.Module | None = None,
        ledger: Ledger | None = None,
        defense_label: str | None = None,
    ) -> None:
        """``undefended``: the victim as trained, when a training-time defense serves another
        model (``model``); perturbation, fidelity and the victim's accuracy are measured
        against it, so a retrained victim's changes count as the defense's.

        ``ledger``: budgets and audit log (in memory when ``None``); the accounts it already
        holds are reopened. ``defense_label`` names the chain in the audit log (the chain's own
        label by default)."""
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        self._undefended = None if undefended is None else undefended.to(self._device).eval()
        self._chain = chain
        self._input_spec = input_spec
        label_only = bool(chain.defenses) and chain.defenses[-1].answers_labels_only
        self._output_spec = OutputSpec(num_classes, label_only, chain.requires_work)
        self._challenges: dict[str, dict[str, WorkChallenge]] = {}
        """proof of work: per caller, the challenges handed out and not yet answered (in
        memory: a restarted service forgets them and the client asks again)"""
        self._accounts: dict[str, _Account] = {}
        self._lock = threading.Lock()
        self._zoo = model if isinstance(model, ZooModule) else None
        self._profile = self._zoo.profile() if self._zoo is not None else None
        self._ledger = ledger if ledger is not None else Ledger()
        self._defense_label = chain.label if defense_label is None else defense_label
        self._restore_accounts()

    def _restore_accounts(self) -> None:
        """Reopen the ledger's accounts: statistics and randomness from their snapshots, the
        budget used from the charges, and per-caller defense states by replaying the chain over
        every answered batch (stored for stateful chains only)."""
        for attacker_id, stored in self._ledger.accounts().items():
            account = self._new_account(attacker_id, stored.budget)
            if stored.snapshot is not None:
                account.stats = AccountStats(**stored.snapshot["stats"])
                account.rng.bit_generator.state = stored.snapshot["rng"]
            account.stats.used = stored.used
            if self._chain.stateful:
                for inputs, served in self._ledger.answered_batches(attacker_id):
                    x = torch.from_numpy(inputs.reshape(-1, *self._input_spec.shape))
                    self._chain.respond(torch.from_numpy(served), x, account.defense_states)
            self._accounts[attacker_id] = account

    def _new_account(self, attacker_id: str, budget: int) -> _Account:
        steps = len(self._chain.defenses)
        stats = AccountStats(budget, step_seconds=[0.0] * steps, step_l1_sum=[0.0] * steps)
        if self._profile is not None:
            stats.served_by = [0] * self._profile.size
        rng = np.random.default_rng(zlib.crc32(attacker_id.encode()))
        return _Account(stats, self._chain.new_states(), rng)

    # ---- referee side -------------------------------------------------------------------------

    @property
    def defense_label(self) -> str:
        """How the audit log names the defense chain."""
        return self._defense_label

    def open_account(self, attacker_id: str, budget: int) -> None:
        """Create an attacker's ledger. Re-opening with the same budget is a no-op."""
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        with self._lock:
            account = self._accounts.get(attacker_id)
            if account is None:
                account = self._new_account(attacker_id, budget)
                self._ledger.open_account(attacker_id, budget, account.snapshot())
                self._accounts[attacker_id] = account
            elif account.stats.budget != budget:
                held = account.stats.budget
                raise ValueError(
                    f"attacker {attacker_id!r} already has budget {held}, not {budget}"
                )

    def account_stats(self, attacker_id: str) -> AccountStats:
        with self._lock:
            stats = self._accounts[attacker_id].stats
            return copy.deepcopy(stats)

    def audit(self, attacker_id: str) -> AuditDigest:
        """Count and SHA-256 of the attacker's audit records (logged with the match)."""
        with self._lock:
            return self._ledger.audit(attacker_id)

    def ownership_keys(self, attacker_id: str) -> list[tuple[int, OwnershipEvidence]]:
        """The chain's verifiers' keys for this caller (referee only: they are the secret)."""
        with self._lock:
            return self._chain.ownership_keys(self._accounts[attacker_id].defense_states)

    def served_copy(self) -> nn.Module:
        """A CPU copy of the model as served (after training-time defenses), in eval mode:
        referee only, for an attack playing the ``model_access`` threat model."""
        with self._lock:
            return copy.deepcopy(self._model).cpu().eval()

    def reference_outputs(self, x: np.ndarray | torch.Tensor) -> ReferenceOutputs:
        """Undefended and defended outputs on trusted evaluation data, with a fresh defense state.

        Timed in batches of :data:`REFERENCE_BATCH` so every defense's latency is measured at the
        same batch size.
        """
        inputs = _as_tensor(x)
        undefended, defended = [], []
        model_seconds = defense_seconds = 0.0
        states = self._chain.new_states()
        for start in range(0, int(inputs.shape[0]), REFERENCE_BATCH):
            batch = inputs[start : start + REFERENCE_BATCH]
            begin = time.perf_counter()
            probs = self._forward(batch)
            model_seconds += time.perf_counter() - begin
            answer, times, _ = self._chain.respond(probs, batch, states)
            defense_seconds += sum(times)
            undefended.append(self._as_trained(batch, probs).numpy())
            defended.append(answer.numpy())
        return ReferenceOutputs(
            np.concatenate(undefended), np.concatenate(defended), model_seconds, defense_seconds
        )

    # ---- oracle side --------------------------------------------------------------------------

    def zoo_profile(self) -> ZooProfile | None:
        """A zoo's members' accuracy and latency (the referee's benign workload needs them);
        ``None`` for a single model."""
        return self._profile

    def public_spec(self) -> tuple[InputSpec, OutputSpec]:
        return self._input_spec, self._output_spec

    def order_sensitive(self) -> bool:
        """Whether a batch's answer depends on the caller's earlier batches: a chain with
        per-caller state (a detector, a watermark log) or a zoo drawing target noise per caller.
        Such a victim must see each caller's batches in the order they were sent."""
        return self._chain.stateful or self._zoo is not None

    def account_status(self, attacker_id: str) -> AccountStatus:
        with self._lock:
            account = self._accounts.get(attacker_id)
            if account is None:
                return AccountStatus(budget=0, used=0)
            return AccountStatus(account.stats.budget, account.stats.used)

    def work_challenge(self, attacker_id: str, query_id: str, batch: int) -> WorkChallenge | None:
        """A fresh proof-of-work challenge for a batch of ``batch`` queries under ``query_id``,
        at the difficulty the chain sets for this caller now. ``None`` when the chain asks for
        no work, the caller is unknown, the batch size is impossible or the query id is already
        charged (a retry needs no new work)."""
        with self._lock:
            account = self._accounts.get(attacker_id)
            fits = 0 < batch <= self._input_spec.max_batch
            if not self._chain.requires_work or account is None or not fits:
                return None
            if self._ledger.lookup(attacker_id, query_id) is not None:
                return None
            bits = self._chain.work_bits(account.defense_states, batch)
            challenge = WorkChallenge(secrets.token_hex(16), bits, batch)
            pending = self._challenges.setdefault(attacker_id, {})
            pending.pop(query_id, None)
            pending[query_id] = challenge
            while len(pending) > PENDING_CHALLENGES:
                del pending[next(iter(pending))]
            return challenge

    def answer(
        self,
        attacker_id: str,
        query_id: str,
        x: Any,
        targets: Any = None,
        work: WorkProof | None = None,
    ) -> Answer | Rejection:
        """Validate, charge and answer one batch; every refusal is returned, never raised.
        ``work``: the solution of this query id's challenge, when the chain asks for work."""
        with self._lock:
            account = self._accounts.get(attacker_id)
            if account is None:
                return Rejection("unknown_attacker", f"no account for attacker {attacker_id!r}")
            rejection = validate_query(x, self._input_spec)
            if rejection is not None:
                return rejection
            stated = self._stated_targets(targets)
            if isinstance(stated, Rejection):
                return stated
            digest = _digest(x, stated)
            stats = account.stats
            batch = int(x.shape[0])
            charged = self._ledger.lookup(attacker_id, query_id)
            if charged is not None and charged.input_hash != digest:
                return Rejection(
                    "query_id_reused", f"query id {query_id!r} was used for other inputs"
                )
            if charged is not None and charged.outputs is not None:
                # a retried call: the recorded answer, charged once
                return Answer(charged.outputs, stats.used, stats.budget - stats.used)
            if charged is None:
                refusal = self._chain.refusal(account.defense_states)
                if refusal is not None:
                    stats.refused_batches += 1
                    self._ledger.save_snapshot(attacker_id, account.snapshot())
                    return Rejection(RejectionCode.REFUSED, refusal)
                remaining = stats.budget - stats.used
                if batch > remaining:
                    return Rejection(
                        RejectionCode.BUDGET_EXHAUSTED,
                        f"batch of {batch} exceeds the remaining budget {remaining}",
                        requested=batch,
                        remaining=remaining,
                    )
                unpaid = self._check_work(attacker_id, query_id, batch, work)
                if unpaid is not None:
                    return unpaid
                stats.used = self._ledger.charge(attacker_id, query_id, batch, digest)
            # else: charged by a call that died before answering; answer it without a new charge
            return self._answer_charged(attacker_id, query_id, account, x, stated)

    def answer_many(
        self, attacker_id: str, batches: list[tuple[str, Any]], targets: Any = None
    ) -> list[Answer | Rejection]:
        """``answer`` each ``(query_id, x)`` batch in order, up to and including the first
        rejection: one call for several batches (:class:`arena.oracle.PipelinedEndpoint`), each
        still charged, and its answer recorded, before the next is tried."""
        results: list[Answer | Rejection] = []
        for query_id, x in batches:
            results.append(self.answer(attacker_id, query_id, x, targets))
            if isinstance(results[-1], Rejection):
                break
        return results

    def _check_work(
        self, attacker_id: str, query_id: str, batch: int, work: WorkProof | None
    ) -> Rejection | None:
        """Proof of work for a batch about to be charged: ``None`` when the chain asks for none
        or ``work`` solves the challenge pending for this query id (then consumed, and counted
        in the caller's statistics); otherwise the rejection (nothing is charged)."""
        if not self._chain.requires_work:
            return None
        if work is None:
            return Rejection(
                RejectionCode.WORK_REQUIRED,
                "this victim asks for proof of work: get work_challenge() for this query id and "
                "send its solution (arena.work.solve) with the batch",
            )
        pending = self._challenges.get(attacker_id, {})
        challenge = pending.get(query_id)
        if challenge is None or challenge.count != batch or not verify(challenge, work):
            return Rejection(
                RejectionCode.WORK_INVALID,
                f"the proof of work does not solve the challenge of query id {query_id!r}: ask "
                "work_challenge() again and solve that one for this very batch",
            )
        del pending[query_id]
        stats = self._accounts[attacker_id].stats
        stats.work_queries += batch
        stats.work_bits_sum += batch * challenge.bits
        stats.work_hashes_expected += batch * (1 << challenge.bits)
        return None

    def _answer_charged(
        self,
        attacker_id: str,
        query_id: str,
        account: _Account,
        x: np.ndarray | torch.Tensor,
        stated: Targets | None,
    ) -> Answer:
        """Run the model and the chain on a charged batch, account it and record the answer."""
        stats = account.stats
        inputs = _as_tensor(x)
        start = time.perf_counter()
        probs = self._serve(inputs, stated, account)
        model_seconds = time.perf_counter() - start
        states = account.defense_states
        defended, step_seconds, step_l1 = self._chain.respond(probs, inputs, states)

        stats.batches += 1
        stats.model_seconds += model_seconds
        stats.defense_seconds += sum(step_seconds)
        for step, (seconds, l1) in enumerate(zip(step_seconds, step_l1, strict=True)):
            stats.step_seconds[step] += seconds
            stats.step_l1_sum[step] += l1
        if stats.detected_after is None:
            stats.detected_after = self._chain.detected_after(states)
        original = self._as_trained(inputs, probs)
        stats.l1_sum += exact_sum(l1_distance(original, defended))
        stats.kl_sum += exact_sum(kl_divergence(defended, original))
        outputs = defended.numpy()
        replay = (inputs.numpy(), probs.numpy()) if self._chain.stateful else None
        self._ledger.record_answer(
            attacker_id, query_id, outputs, self._defense_label, account.snapshot(), replay
        )
        return Answer(outputs, used=stats.used, remaining=stats.budget - stats.used)

    def _stated_targets(self, targets: Any) -> Targets | Rejection | None:
        """The targets a batch asks for: checked for a zoo, refused by a single model."""
        if self._profile is None:
            if targets is None:
                return None
            return Rejection(
                "targets", "this victim is a single model, not a zoo: send queries without targets"
            )
        if targets is None:
            return NO_TARGETS
        parsed = parse_targets(targets)
        return Rejection("targets", parsed) if isinstance(parsed, str) else parsed

    def _serve(self, x: torch.Tensor, stated: Targets | None, account: _Account) -> torch.Tensor:
        """The victim's probabilities; a zoo's from the member selected for the (defended)
        targets, counted per member and against the targets the caller stated."""
        if self._zoo is None or self._profile is None or stated is None:
            return self._forward(x)
        targets = self._chain.perturb_targets(stated, self._profile, account.rng)
        member = select_member(self._profile, targets)
        batch = int(x.shape[0])
        account.stats.served_by[member] += batch
        if self._profile.meets(member, stated):
            account.stats.targets_met += batch
        return self._forward(x, self._zoo.member(member))

    def _as_trained(self, x: torch.Tensor, served: torch.Tensor) -> torch.Tensor:
        """The victim-as-trained's probabilities for ``x`` (``served`` unless a training-time
        defense replaced the model)."""
        return served if self._undefended is None else self._forward(x, self._undefended)

    @torch.no_grad()
    def _forward(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        logits = (model or self._model)(x.to(self._device))
        return torch.softmax(logits.float(), dim=1).cpu()


def _digest(x: np.ndarray | torch.Tensor, targets: Targets | None = None) -> str:
    """Hash of a validated batch (and its targets), so a query id reused with other inputs is
    caught and the audit log identifies what was asked."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    if targets is None:
        return array_hash(array)
    # as floats: equal targets spelled otherwise (Targets(0, 1), Targets(0.0, 1.0)) are one query
    return array_hash(array, repr((float(targets.min_accuracy), float(targets.max_latency_ms))))


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor view of a validated batch (arrays from Ray's object store are read-only: copy)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(x if x.flags.writeable else x.copy())
