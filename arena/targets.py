"""Serving targets: the accuracy and latency a model-zoo caller asks for with each batch.

A query to a model zoo (:mod:`arena.zoo`) may carry :class:`Targets`; the zoo answers it with the
cheapest model that meets them. Targets arrive from untrusted callers, so the service re-checks
them with :func:`parse_targets` (a mapping or a :class:`Targets`) and refuses a malformed one
before anything is charged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TARGET_FIELDS = ("min_accuracy", "max_latency_ms")


@dataclass(frozen=True)
class Targets:
    """Serve with a model of test accuracy >= ``min_accuracy`` (0..1) whose profiled latency per
    request is <= ``max_latency_ms`` (> 0; ``inf`` for no limit)."""

    min_accuracy: float = 0.0
    max_latency_ms: float = math.inf

    def __post_init__(self) -> None:
        problem = _problem(self.min_accuracy, self.max_latency_ms)
        if problem is not None:
            raise ValueError(problem)

    def as_dict(self) -> dict[str, float]:
        return {"min_accuracy": self.min_accuracy, "max_latency_ms": self.max_latency_ms}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problem(accuracy: Any, latency: Any) -> str | None:
    if not _is_number(accuracy) or not math.isfinite(accuracy) or not 0 <= accuracy <= 1:
        return f"min_accuracy must be a number in [0, 1], got {accuracy!r}"
    if not _is_number(latency) or math.isnan(latency) or latency <= 0:
        return f"max_latency_ms must be a positive number of ms (inf: no limit), got {latency!r}"
    return None


def parse_targets(raw: Any) -> Targets | str:
    """``raw`` as :class:`Targets`, or the one-line reason it is not valid targets."""
    if isinstance(raw, Targets):
        return raw
    if not isinstance(raw, Mapping):
        kind = type(raw).__name__
        return f"targets must be a mapping with {', '.join(TARGET_FIELDS)}, got {kind}"
    missing = [f for f in TARGET_FIELDS if f not in raw]
    extra = sorted(str(k) for k in raw if k not in TARGET_FIELDS)
    if missing:
        return f"targets miss {', '.join(missing)} (both {' and '.join(TARGET_FIELDS)} are needed)"
    if extra:
        return f"unknown target fields {', '.join(extra)}; known: {', '.join(TARGET_FIELDS)}"
    problem = _problem(raw["min_accuracy"], raw["max_latency_ms"])
    if problem is not None:
        return problem
    return Targets(float(raw["min_accuracy"]), float(raw["max_latency_ms"]))


NO_TARGETS = Targets()
"""what a zoo assumes for a batch sent without targets: any accuracy, any latency"""
