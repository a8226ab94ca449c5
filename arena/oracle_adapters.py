"""Attacker-side views of an oracle: the defense-aware options any attack can combine with.

Each adapter *is* an :class:`~arena.oracle.Oracle` to the attack holding it, so an attack never
knows whether it talks to the victim directly or through a countermeasure. None of them can
reach past the server's ledger: every query they send is charged there as usual.

- :class:`ArgmaxOracle` — the top-1 countermeasure: keep only the argmax of each answer (what
  defeats perturbations that keep the label, e.g. reverse sigmoid or MAD-argmax).
- :class:`SmoothingOracle` — multi-query smoothing: each logical query is sent as ``copies``
  noisy copies, each charged, and their answers are averaged (what averages out random noise).
- :class:`ReverseSigmoidInversionOracle` — undoes a reverse-sigmoid perturbation whose
  ``beta, gamma`` it estimates from the answers (:mod:`arena.reverse_sigmoid_inversion`).
- :class:`TargetedOracle` — fixed model-zoo targets on every batch (:mod:`arena.zoo`).
- :class:`MultiAccountOracle` — one thief behind several identities, each with its own ledger
  and detector state: a batch is spread round-robin over the identities, an identity a detector
  refuses is dropped, and the sum answered never exceeds the identities' own budgets.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from arena.errors import BudgetExhausted, QueryRefused
from arena.oracle import Oracle, PipelinedEndpoint
from arena.reverse_sigmoid_inversion import Estimate, estimate
from arena.targets import Targets


class OracleView(Oracle):
    """An oracle that forwards to another one; subclasses change what ``query`` does."""

    def __init__(self, inner: Oracle) -> None:  # no super().__init__: no endpoint of its own
        self._inner = inner
        self.input_spec, self.output_spec = inner.input_spec, inner.output_spec

    @property
    def budget(self) -> int:
        return self._inner.budget

    @property
    def used(self) -> int:
        return self._inner.used

    @property
    def remaining(self) -> int:
        return self._inner.remaining

    @property
    def work_seconds(self) -> float:
        return self._inner.work_seconds

    @property
    def work_hashes(self) -> int:
        return self._inner.work_hashes

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        return self._inner.query(x, targets)

    def _pipeline(self) -> PipelinedEndpoint | None:
        """None: a view changes what ``query`` does, so ``query_all`` goes through it."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"


class ArgmaxOracle(OracleView):
    """Answers reduced to one-hot rows at their argmax: the top-1 countermeasure."""

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        return _top1(self._inner.query(x, targets))

    def query_all(
        self,
        x: torch.Tensor,
        batch_size: int | None = None,
        *,
        until_refused: bool = False,
        targets: Targets | None = None,
    ) -> torch.Tensor:
        """Row by row what ``query`` gives, so the inner oracle streams the batches (several
        in flight on a Ray victim) and the rows are reduced afterwards."""
        answers = self._inner.query_all(x, batch_size, until_refused=until_refused, targets=targets)
        return _top1(answers)


def _top1(answers: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(answers.argmax(dim=1), answers.shape[1]).float()


class SmoothingOracle(OracleView):
    """Each query sent as ``copies`` noisy copies (each charged), answers averaged.

    The first copy is the query itself; the others add Gaussian pixel noise of std ``noise``,
    clipped to the input range. The noise comes from ``seed``, so a match replays exactly.
    Budget figures are in logical queries: ``remaining`` is what the inner oracle can still pay
    for whole groups of copies.
    """

    def __init__(self, inner: Oracle, copies: int, noise: float, seed: int) -> None:
        super().__init__(inner)
        self.copies = copies
        self.noise = noise
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def budget(self) -> int:
        return self._inner.budget // self.copies

    @property
    def used(self) -> int:
        return -(-self._inner.used // self.copies)

    @property
    def remaining(self) -> int:
        return self._inner.remaining // self.copies

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        x = torch.as_tensor(x)
        if int(x.shape[0]) > self.remaining:
            raise BudgetExhausted(int(x.shape[0]), self.remaining)
        spec = self.input_spec
        noise = torch.randn((self.copies - 1, *x.shape), generator=self._generator) * self.noise
        noisy = (x.unsqueeze(0) + noise).clamp(spec.low, spec.high)
        copies = torch.cat([x.unsqueeze(0), noisy]).to(torch.float32)
        # every copy of a row in one call where the batch limit allows it
        flat = copies.transpose(0, 1).reshape(-1, *x.shape[1:])
        answers = self._inner.query_all(flat, targets=targets)
        if int(answers.shape[0]) != int(flat.shape[0]):  # cannot happen: query_all raises
            raise QueryRefused("a smoothing group was only partly answered")
        return answers.reshape(int(x.shape[0]), self.copies, -1).mean(dim=1)


class ReverseSigmoidInversionOracle(OracleView):
    """Answers with the reverse-sigmoid perturbation undone: approximately the clean rows.

    Each query goes to the inner oracle unchanged (charged as usual, nothing extra). ``beta``
    and ``gamma`` are estimated from the first ``sample`` answer rows (re-estimated while that
    sample fills, then fixed), so answers a reverse sigmoid cannot explain come back unchanged.
    """

    def __init__(self, inner: Oracle, sample: int = 32) -> None:
        super().__init__(inner)
        self.sample = sample
        self._seen: list[np.ndarray] = []
        self.estimate: Estimate | None = None

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        answers = self._inner.query(x, targets)
        rows = answers.detach().cpu().double().numpy()
        self._learn(rows)
        assert self.estimate is not None
        return torch.from_numpy(self.estimate.invert(rows)).to(answers.dtype)

    def _learn(self, rows: np.ndarray) -> None:
        """Add rows to the estimation sample until it is full; re-estimate when it grew."""
        have = sum(len(r) for r in self._seen)
        if have >= self.sample and self.estimate is not None:
            return
        self._seen.append(rows[: self.sample - have])
        self.estimate = estimate(np.concatenate(self._seen))


class TargetedOracle(OracleView):
    """Every batch sent with the same model-zoo targets (unless a caller gives its own): how an
    extraction attack that knows nothing of zoos is steered to the member those targets pick."""

    def __init__(self, inner: Oracle, targets: Targets) -> None:
        super().__init__(inner)
        self.targets = targets

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        return self._inner.query(x, targets if targets is not None else self.targets)


class MultiAccountOracle(Oracle):
    """Several identities of one thief presented as one oracle (a Sybil attacker).

    ``budget`` is the sum of the identities' budgets; the server charges each identity on its
    own ledger. Rows of a batch go to the identities in turn; a refused identity is dropped and
    its rows go to the others. When the live identities cannot answer a batch that the whole
    budget could, :class:`QueryRefused` is raised (the thief was refused, not out of budget).
    """

    def __init__(self, identities: Sequence[Oracle]) -> None:  # no endpoint of its own
        if not identities:
            raise ValueError("a multi-account thief needs at least one identity")
        self._identities = list(identities)
        self._alive = [True] * len(self._identities)
        self._turn = itertools.count()
        self.input_spec = self._identities[0].input_spec
        self.output_spec = self._identities[0].output_spec

    @property
    def budget(self) -> int:
        return sum(o.budget for o in self._identities)

    @property
    def used(self) -> int:
        return sum(o.used for o in self._identities)

    @property
    def remaining(self) -> int:
        return sum(
            o.remaining for o, alive in zip(self._identities, self._alive, strict=True) if alive
        )

    @property
    def work_seconds(self) -> float:
        """Proof-of-work seconds over every identity."""
        return sum(o.work_seconds for o in self._identities)

    @property
    def work_hashes(self) -> int:
        return sum(o.work_hashes for o in self._identities)

    @property
    def refused_identities(self) -> int:
        return self._alive.count(False)

    def _pipeline(self) -> PipelinedEndpoint | None:
        """None: each batch is spread over the identities by ``query``."""
        return None

    def query(self, x: torch.Tensor, targets: Targets | None = None) -> torch.Tensor:
        x = torch.as_tensor(x)
        n = int(x.shape[0])
        if n > self.remaining:
            if n <= self.budget - self.used:  # the budget is there, but with refused identities
                raise QueryRefused(
                    f"{self.refused_identities} identities refused; the others have "
                    f"{self.remaining} queries left for a batch of {n}"
                )
            raise BudgetExhausted(n, self.remaining)
        answers: list[torch.Tensor | None] = [None] * n
        pending = np.arange(n)
        while len(pending):
            plan = self._assign(len(pending))
            if plan is None:
                raise QueryRefused("every identity of this thief has been refused")
            leftover: list[np.ndarray] = []
            start = 0
            for identity, count in plan:
                rows = pending[start : start + count]
                start += count
                try:
                    out = self._identities[identity].query(x[torch.from_numpy(rows)], targets)
                except QueryRefused:
                    self._alive[identity] = False
                    leftover.append(rows)
                    continue
                for row, answer in zip(rows, out, strict=True):
                    answers[row] = answer
            pending = np.concatenate(leftover) if leftover else np.empty(0, dtype=np.int64)
            if len(pending) > self.remaining:
                raise QueryRefused(
                    f"identities were refused with {len(pending)} rows of a batch unanswered"
                )
        return torch.stack([a for a in answers if a is not None])

    def _assign(self, n: int) -> list[tuple[int, int]] | None:
        """Split ``n`` rows over live identities in turn, none beyond its remaining budget."""
        live = [i for i, alive in enumerate(self._alive) if alive and self._identities[i].remaining]
        if not live:
            return None
        first = next(self._turn) % len(live)
        order = live[first:] + live[:first]
        counts = dict.fromkeys(order, 0)
        left = n
        while left:
            progressed = False
            for i in order:
                if left and counts[i] < self._identities[i].remaining:
                    counts[i] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                return None
        return [(i, c) for i, c in counts.items() if c]

    def __repr__(self) -> str:
        return f"MultiAccountOracle({len(self._identities)} identities, used={self.used})"
