"""The oracle: the only thing an attacker holds (DESIGN §3).

An :class:`Oracle` wraps an *endpoint* (a victim service in this process, or a Ray actor proxy in
``orchestration``) and an attacker identity. It exposes ``query``, ``budget``, ``used``,
``remaining`` and the public input/output spec, and nothing else of the victim. Rejections travel
back as values (cheaper than raising through Ray) and are raised here as typed errors.
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
)
from arena.targets import Targets

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
        self, attacker_id: str, query_id: str, x: Any, targets: Any = None
    ) -> Answer | Rejection: ...

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
        for pause in (*UNAVAILABLE_RETRY_PAUSES_S, None):
            if targets is None:
                result = self._endpoint.answer(self._attacker_id, query_id, payload)
            else:
                result = self._endpoint.answer(self._attacker_id, query_id, payload, targets)
            if (
                not (isinstance(result, Rejection) and result.code == RejectionCode.UNAVAILABLE)
                or pause is None
            ):
                break
            # the same query id again: the victim's ledger answers it at most one charge
            time.sleep(pause)
        if isinstance(result, Rejection):
            raise result.to_error()
        with self._lock:
            self._used = max(self._used, result.used)
        return torch.from_numpy(np.array(result.outputs, dtype=np.float32, copy=True))

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
