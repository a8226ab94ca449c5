"""The oracle: the only thing an attacker holds (DESIGN §3).

An :class:`Oracle` wraps an *endpoint* (a victim service in this process, or a Ray actor proxy in
``orchestration``) and an attacker identity. It exposes ``query``, ``budget``, ``used``,
``remaining`` and the public input/output spec, and nothing else of the victim. Rejections travel
back as values (cheaper than raising through Ray) and are raised here as typed errors.

When the output spec says ``work_required`` (a proof-of-work defense), ``query`` asks the
endpoint for the batch's challenge, solves it (:mod:`arena.work`, real CPU work, timed in
``work_seconds``) and sends the proof with the batch; a victim that forgot the challenge (it
restarted in between) is asked for a new one once.

``query_all`` streams its batches to an endpoint that can take them ahead
(:class:`PipelinedEndpoint`: a Ray actor): up to :data:`CALL_BYTES` of batches travel in one call,
so the transport's fixed cost is paid once for several, and :data:`PIPELINE_DEPTH` calls are in
flight, so the next one travels while the victim computes. The victim still answers them one
batch at a time and in order, charging each on its own, and a batch is only sent ahead when the
sequential loop would have sent it too: it is valid, fits the budget left after the batches
already sent, and needs no proof of work.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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

PIPELINE_DEPTH = 2
"""calls ``query_all`` keeps in flight on a :class:`PipelinedEndpoint`: two let the next call
travel while the victim computes this one; more only queue in the victim"""

CALL_BYTES = 4 * 1024**2
"""batches ``query_all`` sends in one call, by size: a call closes once its inputs reach this
many bytes (six 256-image Fashion-MNIST batches, two CIFAR-10 ones; at least one batch);
large enough that a transport's fixed cost per call (about a millisecond on Ray) is small
against the work, small enough that the first call does not keep the victim waiting long"""

CALL_BATCHES = 64
"""and at most this many batches (single-image streams)"""


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


PendingAnswers = Callable[[], "list[Answer | Rejection]"]
"""Batches on their way: calling it waits for the results, in order, up to and including the
first rejection (the batches after it were not tried)."""


@runtime_checkable
class PipelinedEndpoint(OracleEndpoint, Protocol):
    """An endpoint that takes batches before it has answered the previous ones, several in one
    call, and answers the batches of one caller in the order they were submitted, each as
    ``answer`` would (a Ray actor proxy)."""

    def submit(
        self, attacker_id: str, batches: list[tuple[str, Any]], targets: Any = None
    ) -> PendingAnswers:
        """Send ``(query_id, x)`` batches, each valid by :func:`validate_query`, in one call."""
        ...

    def pipelines(self) -> bool:
        """Whether batches may be sent ahead at all (not when the order of a caller's batches
        matters to the victim and the transport could reorder them after a fault)."""
        ...


@dataclass(frozen=True)
class _Ahead:
    """A batch ``query_all`` sends ahead."""

    query_id: str
    payload: Any
    rows: int


@dataclass(frozen=True)
class _InFlight:
    """One call's batches, sent."""

    batches: list[_Ahead]
    pending: PendingAnswers

    @property
    def rows(self) -> int:
        return sum(batch.rows for batch in self.batches)


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
        payload = self._payload(x)
        return self._accept(self._settle(self._next_query_id(), payload, targets))

    def _payload(self, x: Any) -> Any:
        """What goes to the endpoint: numpy travels through Ray without a copy; a batch of
        another dtype or shape goes as it is and is refused (never made contiguous: a huge
        expanded view would be copied)."""
        if not isinstance(x, torch.Tensor):
            return x
        tensor = x.detach()
        fits = check_structure(tensor, self.input_spec) is None
        return tensor.cpu().contiguous().numpy() if fits else tensor.cpu()

    def _next_query_id(self) -> str:
        """Unique per oracle (a second oracle of the same attacker never collides); the counter
        is itertools.count, safe when threads share one oracle."""
        return f"{self._session}-{next(self._query_ids)}"

    def _settle(
        self,
        query_id: str,
        payload: Any,
        targets: Targets | None,
        first: Answer | Rejection | None = None,
    ) -> Answer | Rejection:
        """Send a batch until it is answered or finally refused: an unavailable victim is asked
        again (the same query id: its ledger charges it at most once), a forgotten proof of work
        is solved anew once. ``first``: the result of a send already made (a pipelined batch)."""
        work: WorkProof | Rejection | None = Rejection(RejectionCode.UNAVAILABLE, "not asked yet")
        renewed = False
        for pause in (*UNAVAILABLE_RETRY_PAUSES_S, None):
            if first is not None:
                result, first, work = first, None, None
            else:
                if isinstance(work, Rejection):  # first pass, or the challenge went unanswered
                    work = self._work(query_id, payload)
                result = self._send(query_id, payload, targets, work)
            if _coded(result, RejectionCode.WORK_INVALID) and work is not None and not renewed:
                # the victim forgot the challenge (it restarted in between): solve a new one once
                renewed = True
                work = self._work(query_id, payload)
                result = self._send(query_id, payload, targets, work)
            if not _coded(result, RejectionCode.UNAVAILABLE) or pause is None:
                break
            time.sleep(pause)
        return result

    def _accept(self, result: Answer | Rejection) -> torch.Tensor:
        """The answered rows, or the rejection raised as its typed error."""
        if isinstance(result, Rejection):
            raise result.to_error()
        self._count(result)
        return torch.from_numpy(np.array(result.outputs, dtype=np.float32, copy=True))

    def _count(self, result: Answer | Rejection) -> None:
        if isinstance(result, Answer):
            with self._lock:
                self._used = max(self._used, result.used)

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
        endpoint = self._pipeline()
        chunks: list[torch.Tensor] = []
        in_flight: deque[_InFlight] = deque()
        call: list[_Ahead] = []  # the next call's batches, not sent yet
        try:
            for start in range(0, int(x.shape[0]), size):
                batch = x[start : start + size]
                ahead = None if endpoint is None else self._ahead(batch, call, in_flight)
                if ahead is None:  # the sequential way, after the batches sent ahead
                    self._send_call(endpoint, call, in_flight, targets)
                    self._receive_all(in_flight, chunks, targets)
                    chunks.append(self.query(batch, targets))
                    continue
                call.append(ahead)
                if fills_a_call([b.payload for b in call]):
                    self._send_call(endpoint, call, in_flight, targets)
                    if len(in_flight) >= PIPELINE_DEPTH:
                        self._receive(in_flight.popleft(), chunks, targets)
            self._send_call(endpoint, call, in_flight, targets)
            self._receive_all(in_flight, chunks, targets)
        except QueryRefused:
            if not until_refused:
                raise
        finally:
            self._abandon(in_flight)  # only when the loop ended early
        return torch.cat(chunks) if chunks else torch.empty(0, self.num_classes)

    def _pipeline(self) -> PipelinedEndpoint | None:
        """The endpoint when ``query_all`` may keep batches in flight on it: it takes them
        ahead, and no proof of work is asked (each batch would wait for its challenge)."""
        endpoint = self._endpoint
        if self.output_spec.work_required or not isinstance(endpoint, PipelinedEndpoint):
            return None
        return endpoint if endpoint.pipelines() else None

    def _ahead(self, x: Any, call: list[_Ahead], in_flight: deque[_InFlight]) -> _Ahead | None:
        """The batch to send ahead, when the sequential loop would surely send it too: valid
        (the victim runs the same check), and within the budget left after the batches already
        sent or waiting to be. ``None``: send it the sequential way (it may be refused, and must
        not be charged while an earlier batch could still be refused)."""
        payload = self._payload(x)
        rows = int(payload.shape[0]) if validate_query(payload, self.input_spec) is None else 0
        ahead = rows + sum(b.rows for b in call) + sum(c.rows for c in in_flight)
        if rows == 0 or ahead > self.remaining:
            return None
        return _Ahead(self._next_query_id(), payload, rows)

    def _send_call(
        self,
        endpoint: PipelinedEndpoint | None,
        call: list[_Ahead],
        in_flight: deque[_InFlight],
        targets: Targets | None,
    ) -> None:
        """Submit the batches waiting in ``call`` (if any) as one call, without waiting."""
        if endpoint is None or not call:
            return
        sent = [(b.query_id, b.payload) for b in call]
        in_flight.append(_InFlight(list(call), endpoint.submit(self._attacker_id, sent, targets)))
        call.clear()

    def _receive(
        self, call: _InFlight, chunks: list[torch.Tensor], targets: Targets | None
    ) -> None:
        """Append a call's answers to ``chunks`` batch by batch (a rejection raises after the
        answers before it); a batch the victim could not answer, or did not try after an
        earlier rejection, goes the sequential way (retried, or refused as usual)."""
        results: list[Answer | Rejection | None] = [*call.pending()]
        results += [None] * (len(call.batches) - len(results))
        for batch, result in zip(call.batches, results, strict=True):
            chunks.append(
                self._accept(self._settle(batch.query_id, batch.payload, targets, result))
            )

    def _receive_all(
        self, in_flight: deque[_InFlight], chunks: list[torch.Tensor], targets: Targets | None
    ) -> None:
        while in_flight:
            self._receive(in_flight.popleft(), chunks, targets)

    def _abandon(self, in_flight: deque[_InFlight]) -> None:
        """Wait out the calls still in flight when the loop ends early, so ``used`` counts any
        batch the victim charged (none after a refusal: the detector refuses them too)."""
        while in_flight:
            for result in in_flight.popleft().pending():
                self._count(result)

    def __repr__(self) -> str:
        return f"Oracle(attacker={self._attacker_id!r}, used={self.used}/{self.budget})"


def fills_a_call(batches: list[np.ndarray]) -> bool:
    """Whether these batches are enough for one call (:data:`CALL_BYTES`, :data:`CALL_BATCHES`)."""
    size = sum(int(batch.nbytes) for batch in batches)
    return size >= CALL_BYTES or len(batches) >= CALL_BATCHES


def _coded(result: Answer | Rejection, code: RejectionCode) -> bool:
    return isinstance(result, Rejection) and result.code == code
