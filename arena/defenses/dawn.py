"""DAWN: a serving-side watermark for every caller (Szyller et al., "DAWN: Dynamic Adversarial
Watermarking of Neural Networks", ACM MM 2021).

The victim is not retrained. For a keyed, deterministic fraction of each caller's queries the
service answers with a *wrong* label, and remembers those (query, label) pairs for that caller.
A thief who trains on its answers learns the wrong labels too; after the theft the owner asks
the suspect model for those queries: a model that gives the wrong labels far more often than an
independent model would has been trained on the victim's answers.

Here, per row of a batch: a keyed hash of the row's bytes (the same query always gets the same
decision, so asking twice reveals nothing and answering a batch whole or in parts is identical)
selects it with probability ``fraction``; the selected row's answer swaps its top class with a
keyed other class, so the answer is a full probability vector whose argmax is wrong. The caller's
state keeps at most ``max_keys`` pairs. Verification: a suspect's agreement with the remembered
wrong labels against ``threshold`` (DAWN uses 0.5 over a watermark of a few dozen keys, which an
independent model reaches with negligible probability; the false-claim rate measured here on
independent models is reported in the docs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from arena.defenses.base import Defense, FloatRange, OwnershipKeys, ParamSpace
from arena.defenses.random_noise import row_keyed_uniforms
from arena.defenses.registry import DEFENSES
from arena.validation import check_integer, check_number


@dataclass
class WatermarkLog:
    """One caller's watermarked queries and the wrong labels they were answered with."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    count: int = 0


@DEFENSES.register("dawn")
@dataclass(frozen=True)
class Dawn(Defense):
    """Serving-side watermark: a keyed fraction of each caller's answers get a wrong label."""

    fraction: float = 0.005
    """share of queries watermarked, in (0, 0.5]"""
    threshold: float = 0.5
    """a suspect agreeing with at least this share of the wrong labels is claimed stolen"""
    max_keys: int = 1000
    """watermarked queries remembered per caller"""
    key: int = 0
    """the owner's secret key (selects the queries and the wrong labels)"""

    stateful = True
    search_space: ClassVar[dict[str, ParamSpace]] = {"fraction": FloatRange(0.001, 0.1, log=True)}

    def __post_init__(self) -> None:
        check_number("fraction", self.fraction, low=0, high=0.5, low_open=True)
        check_number("threshold", self.threshold, low=0, high=1, low_open=True)
        check_integer("max_keys", self.max_keys, low=1)
        check_integer("key", self.key, low=0)

    def new_state(self) -> WatermarkLog:
        return WatermarkLog()

    def respond(self, probs: torch.Tensor, x: torch.Tensor, state: Any) -> torch.Tensor:
        classes = int(probs.shape[1])
        draws = torch.from_numpy(row_keyed_uniforms(x, self.key, 2))
        chosen = draws[:, 0] < self.fraction
        if not bool(chosen.any()):
            return probs
        top = probs.argmax(dim=1)
        shift = 1 + (draws[:, 1] * (classes - 1)).long().clamp_max(classes - 2)
        wrong = (top + shift) % classes
        rows = chosen.nonzero().squeeze(1)
        answered = probs.clone()
        top_value = probs[rows, top[rows]]
        answered[rows, top[rows]] = probs[rows, wrong[rows]]
        answered[rows, wrong[rows]] = top_value
        if state is not None and state.count < self.max_keys:
            keep = rows[: self.max_keys - state.count]
            state.inputs.append(x[keep].detach().to(torch.float32).cpu().clone())
            state.labels.append(wrong[keep].cpu())
            state.count += int(keep.numel())
        return answered

    def ownership_keys(self, state: Any) -> OwnershipKeys | None:
        if not isinstance(state, WatermarkLog) or state.count == 0:
            return None
        return OwnershipKeys(torch.cat(state.inputs), torch.cat(state.labels), self.threshold)
