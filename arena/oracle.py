"""The oracle: the only thing an attacker holds (DESIGN §3).

An :class:`Oracle` wraps an *endpoint* (a victim service in this process, or a Ray actor proxy in
``orchestration``) and an attacker identity. It exposes ``query``, ``budget``, ``used``,
``remaining`` and the public input/output spec, and nothing else of the victim. Rejections travel
back as values (cheaper than raising through Ray) and are raised here as typed errors.

When the output spec says ``work_required`` (a proof-of-work defense), ``query`` asks the
endpoint for the batch's challenge, solves it (:mod:`arena.work`, real CPU work, timed in
``work_seconds``) and sends the proof with the batch; a victim that forgot the challenge (it
restarted in between) is asked for a new one once.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from arena.errors import (
    BudgetExhausted,
    InvalidQuery,
    Overloaded,
    QueryRefused,
    RejectionCode,
    VictimUnavailable,
    WorkRejected,
)
from arena.targets import Targets
from arena.work import WorkChallenge, WorkProof, solve

UNAVAILABLE_RETRY_PAUSES_S = (0.5, 2.0)
"""pauses before re-sending a batch the victim could not answer (it may be restarting)"""


@dataclass(frozen=True)
class InputSpec:
    """What a valid query batch looks like: ``[B, *shape]`` float32 within ``[low, high]``."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0
    max_batch: int = 1024


@dataclass(frozen=True)
class OutputSpec:
    """What comes back: ``[B, num_classes]`` probability rows (one-hot when label-only)."""

    num_classes: int
    label_only: bool = False
    work_required: bool = False
    """each batch needs a solved proof-of-work challenge (:mod:`arena.work`)"""


@dataclass(frozen=True)
class Answer:
    """A served batch and the account after charging it."""

    outputs: np.ndarray
    used: int
    remaining: int


@dataclass(frozen=True)
class Rejection:
    """A refused batch; nothing was charged."""

    code: str
    message: str
    requested: int = 0
    remaining: int = 0

    def to_error(self) -> Exception:
        code = RejectionCode(self.code)
        if code is RejectionCode.BUDGET_EXHAUSTED:
            return BudgetExhausted(self.requested, self.remaining)
        if code is RejectionCode.REFUSED:
            return QueryRefused(self.message)
        if code is RejectionCode.OVERLOADED:
            return Overloaded(self.message)
        if code is RejectionCode.UNAVAILABLE:
            return VictimUnavailable(self.message)
        if code in (RejectionCode.WORK_REQUIRED, RejectionCode.WORK_INVALID):
            return WorkRejected(code, self.message)
        return InvalidQuery(code, self.message)


@dataclass(frozen=True)
class AccountStatus:
    budget: int
    used: int

    @property
    def remaining(self) -> int:
        return self.budget - self.used


class OracleEndpoint(Protocol):
    """What an oracle talks to: the query half of a victim service."""

    def answer(
        self,
        attacker_id: str,
        query_id: str,
        x: Any,
        targets: Any = None,
        work: WorkProof | None = None,
    ) -> Answer | Rejection: ...

    def work_challenge(self, attacker_id: str, query_id: str, batch: int) -> WorkChallenge | None:
        """The proof-of-work puzzle a batch of ``batch`` queries under ``query_id`` must come
        with; ``None`` when the victim asks for no work (or the query id is already charged)."""
        ...

    def account_status(self, attacker_id: str) -> AccountStatus: ...

    def public_spec(self) -> tuple[InputSpec, OutputSpec]: ...


def validate_query(x: Any, spec: InputSpec) -> Rejection | None:
    """Check a batch against the input spec without copying it; cheap checks come first."""
    rejection = check_structure(x, spec)
    if rejection is not None:
        return rejection
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    if not np.isfinite(array).all():
        return Rejection("non_finite", "the batch contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < spec.low or high > spec.high:
        return Rejection(
            "out_of_range", f"values must lie in [{spec.low}, {spec.high}], got [{low:g}, {high:g}]"
        )
    return None


def check_structure(x: Any, spec: InputSpec) -> Rejection | None:
    """The checks of :func:`validate_query` that need no pass over the values (type, dtype,
    rank, batch size, sample shape). Clients run them before a batch is copied or serialised,
    so a huge broadcast view is refused without ever being materialised."""
    if not (type(x) is np.ndarray or isinstance(x, torch.Tensor)):
        # ndarray subclasses are refused too: a masked array would hide NaNs from the checks
        kind = type(x).__name__
        return Rejection(
            RejectionCode.NOT_ARRAY, f"expected a numpy array or torch tensor, got {kind}"
        )
    dtype = str(x.dtype).removeprefix("torch.")
    if dtype != spec.dtype:
        return Rejection("dtype", f"expected dtype {spec.dtype}, got {dtype}")
    expected = len(spec.shape) + 1
    if x.ndim != expected:
        return Rejection(
            "shape", f"expected shape [B, {', '.join(map(str, spec.shape))}], got {list(x.shape)}"
        )
    batch = int(x.shape[0])
    if batch == 0:
        return Rejection("empty", "the batch is empty")
    if batch > spec.max_batch:
        message = f"batch of {batch} exceeds the maximum {spec.max_batch}"
        return Rejection("batch_too_large", message)
    if tuple(int(s) for s in x.shape[1:]) != spec.shape:
        return Rejection(
            "shape", f"expected shape [B, {', '.join(map(str, spec.shape))}], got {list(x.shape)}"
        )
    return None


class Oracle:
    """Black-box access to a defended victim under a server-enforced budget."""

    def __init__(self, endpoint: OracleEndpoint, attacker_id: str) -> None:
        self._endpoint = endpoint
        self._attacker_id = attacker_id
        self._session = uuid.uuid4().hex[:12]
        self._query_ids = itertools.count()
        self._lock = threading.Lock()
        self._work_seconds = 0.0
        self._work_hashes = 0
        self.input_spec, self.output_spec = endpoint.public_spec()
        status = endpoint.account_status(attacker_id)
        self._budget, self._used = status.budget, status.used

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def used(self) -> int:
        return self._used

    @property
    def remaining(self) -> int:
        return self._budget - self._used

    @property
    def work_seconds(self) -> float:
        """Seconds this oracle spent solving proof-of-work puzzles (measured client-side)."""
        return self._work_seconds

    @property
    def work_hashes(self) -> int:
        """Hashes it computed for them."""
        return self._work_hashes

    @property
    def num_classes(self) -> int:
        return self.output_spec.num_classes

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        """Answer a batch ``[B, *input_shape]``; InvalidQuery or BudgetExhausted charge nothing.

        ``targets`` are for model zoos (:mod:`arena.zoo`): the accuracy and latency the batch
        asks for; a single-model victim refuses them."""
        payload: Any = x
        if isinstance(x, torch.Tensor):
            # numpy travels through Ray without a copy; a batch of another dtype or shape goes as
            # it is and is refused (never made contiguous: a huge expanded view would be copied)
            tensor = x.detach()
            fits = check_structure(tensor, self.input_spec) is None
            payload = tensor.cpu().contiguous().numpy() if fits else tensor.cpu()
        # unique per oracle (a second oracle of the same attacker never collides); the counter is
        # itertools.count, safe when threads share one oracle
        query_id = f"{self._session}-{next(self._query_ids)}"
        work: WorkProof | Rejection | None = Rejection(RejectionCode.UNAVAILABLE, "not asked yet")
        renewed = False
        for pause in (*UNAVAILABLE_RETRY_PAUSES_S, None):
            if isinstance(work, Rejection):  # first pass, or the challenge itself went unanswered
                work = self._work(query_id, payload)
            result = self._send(query_id, payload, targets, work)
            if _coded(result, RejectionCode.WORK_INVALID) and work is not None and not renewed:
                # the victim forgot the challenge (it restarted in between): solve a new one once
                renewed = True
                work = self._work(query_id, payload)
                result = self._send(query_id, payload, targets, work)
            if not _coded(result, RejectionCode.UNAVAILABLE) or pause is None:
                break
            # the same query id again: the victim's ledger answers it at most one charge
            time.sleep(pause)
        if isinstance(result, Rejection):
            raise result.to_error()
        with self._lock:
            self._used = max(self._used, result.used)
        return torch.from_numpy(np.array(result.outputs, dtype=np.float32, copy=True))

    def _send(
        self,
        query_id: str,
        payload: Any,
        targets: Targets | None,
        work: WorkProof | Rejection | None,
    ) -> Answer | Rejection:
        """One call to the endpoint (targets and work only when there are some, so endpoints
        that know neither keep working); a challenge that went unanswered is that rejection."""
        if isinstance(work, Rejection):
            return work
        extra: dict[str, Any] = {}
        if targets is not None:
            extra["targets"] = targets
        if work is not None:
            extra["work"] = work
        return self._endpoint.answer(self._attacker_id, query_id, payload, **extra)

    def _work(self, query_id: str, payload: Any) -> WorkProof | Rejection | None:
        """Solve the victim's challenge for this batch when its spec asks for work (``None``
        otherwise, or when the victim has no challenge: a malformed or already charged batch);
        an unavailable victim is a rejection the caller retries like an unanswered batch."""
        if not self.output_spec.work_required or check_structure(payload, self.input_spec):
            return None
        try:
            challenge = self._endpoint.work_challenge(
                self._attacker_id, query_id, int(payload.shape[0])
            )
        except VictimUnavailable as exc:
            return Rejection(RejectionCode.UNAVAILABLE, str(exc))
        if challenge is None:
            return None
        solved = solve(challenge)
        with self._lock:
            self._work_seconds += solved.seconds
            self._work_hashes += solved.hashes
        return solved.proof

    def query_all(
        self,
        x: torch.Tensor,
        batch_size: int | None = None,
        *,
        until_refused: bool = False,
        targets: Targets | None = None,
    ) -> torch.Tensor:
        """Query ``x`` in batches of at most the service's ``max_batch``.

        With ``until_refused``, a detector's refusal ends the loop instead of raising: the answers
        cover the first ``len(result)`` rows of ``x`` and the attacker works with those.
        """
        size = min(batch_size or self.input_spec.max_batch, self.input_spec.max_batch)
        chunks: list[torch.Tensor] = []
        for start in range(0, int(x.shape[0]), size):
            try:
                chunks.append(self.query(x[start : start + size], targets))
            except QueryRefused:
                if not until_refused:
                    raise
                break
        return torch.cat(chunks) if chunks else torch.empty(0, self.num_classes)

    def __repr__(self) -> str:
        return f"Oracle(attacker={self._attacker_id!r}, used={self.used}/{self.budget})"


def _coded(result: Answer | Rejection, code: RejectionCode) -> bool:
    return isinstance(result, Rejection) and result.code == code
