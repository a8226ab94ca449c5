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

from arena.validation import check_number

TARGET_FIELDS = ("min_accuracy", "max_latency_ms")


@dataclass(frozen=True)
class Targets:
    """Serve with a model of test accuracy >= ``min_accuracy`` (0..1) whose profiled latency per
    request is <= ``max_latency_ms`` (> 0; ``inf`` for no limit)."""

    min_accuracy: float = 0.0
    max_latency_ms: float = math.inf

    def __post_init__(self) -> None:
        _check_targets(self.min_accuracy, self.max_latency_ms)

    def as_dict(self) -> dict[str, float]:
        return {"min_accuracy": self.min_accuracy, "max_latency_ms": self.max_latency_ms}


def _check_targets(accuracy: object, latency: object) -> None:
    """Raise ValueError naming the first of ``accuracy`` and ``latency`` that is not valid."""
    check_number("min_accuracy", accuracy, low=0, high=1)
    check_number("max_latency_ms", latency, low=0, low_open=True, allow_inf=True)


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
    try:
        _check_targets(raw["min_accuracy"], raw["max_latency_ms"])
    except ValueError as exc:
        return str(exc)
    return Targets(float(raw["min_accuracy"]), float(raw["max_latency_ms"]))


NO_TARGETS = Targets()
"""what a zoo assumes for a batch sent without targets: any accuracy, any latency"""
