"""The Defense contract (DESIGN §3): a frozen dataclass of hyperparameters with optional hooks.

Output-side defenses implement :meth:`Defense.respond`, vectorised over the batch. Training-time
defenses implement :meth:`Defense.prepare`. Detectors keep per-attacker state from
:meth:`Defense.new_state`. Tunable hyperparameters are declared in ``search_space`` as plain data
(Optuna reads it in the orchestration layer; defenses never import Optuna).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from arena.data import Split


@dataclass(frozen=True)
class FloatRange:
    """A continuous hyperparameter range for tuning."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer hyperparameter range for tuning."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter for tuning."""

    options: tuple[Any, ...]


ParamSpace = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Defense:
    """Base class: every hook defaults to "change nothing"."""

    preserves_argmax: ClassVar[bool] = False
    """True when the defended argmax always equals the undefended one (utility is unchanged)."""
    stateful: ClassVar[bool] = False
    """True when ``respond`` reads per-attacker state from ``new_state``."""
    needs_training: ClassVar[bool] = False
    """True when ``prepare`` changes the victim's weights (training-time defense)."""
    answers_labels_only: ClassVar[bool] = False
    """True when the answers are one-hot labels (attackers are told through the output spec)."""
    search_space: ClassVar[dict[str, ParamSpace]] = {}
    """Tunable hyperparameters and their ranges."""

    def prepare(self, model: nn.Module, train_data: Split) -> nn.Module:
        """Training-time hook: return the model the service should serve."""
        return model

    def new_state(self) -> Any:
        """Per-attacker state for detectors; ``None`` for stateless defenses."""
        return None

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        """Output hook: map the ``[B, C]`` probabilities the model gave for ``x`` to answers."""
        return probs

    def params(self) -> dict[str, Any]:
        """Hyperparameters as a plain dict (for labels, hashing and tracking)."""
        return dataclasses.asdict(self)


def renormalise(rows: torch.Tensor) -> torch.Tensor:
    """Clip negatives and rescale rows to sum to one; an all-zero row becomes uniform."""
    rows = rows.clamp_min(0.0)
    total = rows.sum(dim=1, keepdim=True)
    uniform = torch.full_like(rows, 1.0 / rows.shape[1])
    return torch.where(total > 0, rows / total.clamp_min(1e-30), uniform)


def one_hot_argmax(probs: torch.Tensor) -> torch.Tensor:
    """One-hot rows at each row's argmax."""
    return torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
