"""Malformed queries of every kind the service must refuse (RELIABILITY Q1), for any input shape.

One catalogue, so the Ray-service test and ``benchmarks/malformed_flood.py`` send the same flood.
Each entry builds a fresh payload, so no case can be mutated by another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from arena.errors import QueryErrorCode


@dataclass(frozen=True)
class MalformedQuery:
    """One kind of bad payload and the typed error code it must come back with."""

    kind: str
    make: Callable[[], Any]
    code: QueryErrorCode


def valid_batch(
    batch: int, sample_shape: tuple[int, ...], value: float | None = None
) -> np.ndarray:
    """A valid float32 batch in ``[0, 1)`` (seeded by its size); ``value`` put in its last row."""
    x = np.random.default_rng(batch).random((batch, *sample_shape), dtype=np.float32)
    if value is not None:
        x[(-1,) + (0,) * len(sample_shape)] = value
    return x


def malformed_queries(sample_shape: tuple[int, ...], max_batch: int) -> list[MalformedQuery]:
    """Every kind of Q1: non-arrays, wrong dtypes, wrong shapes, empty, over the batch limit,
    non-finite and out-of-range values, for a service taking ``[N, *sample_shape]``."""
    channels, height, width = sample_shape

    def ok(batch: int, value: float | None = None) -> np.ndarray:
        return valid_batch(batch, sample_shape, value)

    def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype)

    two = (2, *sample_shape)
    channels_last = (2, height, width, channels)
    too_big = (2, channels, height + 20, width + 20)
    cases: list[tuple[str, Callable[[], Any], QueryErrorCode]] = [
        ("none", lambda: None, QueryErrorCode.NOT_ARRAY),
        ("str", lambda: "0.5", QueryErrorCode.NOT_ARRAY),
        ("int", lambda: 7, QueryErrorCode.NOT_ARRAY),
        ("bytes", lambda: ok(2).tobytes(), QueryErrorCode.NOT_ARRAY),
        ("dict", lambda: {"x": ok(2)}, QueryErrorCode.NOT_ARRAY),
        ("nested_list", lambda: ok(2).tolist(), QueryErrorCode.NOT_ARRAY),
        ("ragged_list", lambda: [[0.1], [0.2, 0.3]], QueryErrorCode.NOT_ARRAY),
        ("masked_array", lambda: np.ma.masked_invalid(ok(2, np.nan)), QueryErrorCode.NOT_ARRAY),
        ("float64", lambda: ok(2).astype(np.float64), QueryErrorCode.DTYPE),
        ("int64", lambda: zeros(two, np.int64), QueryErrorCode.DTYPE),
        ("uint8", lambda: zeros(two, np.uint8), QueryErrorCode.DTYPE),
        ("bool", lambda: zeros(two, bool), QueryErrorCode.DTYPE),
        ("complex64", lambda: zeros(two, np.complex64), QueryErrorCode.DTYPE),
        ("object", lambda: ok(2).astype(object), QueryErrorCode.DTYPE),
        ("torch_float16", lambda: torch.zeros(two, dtype=torch.float16), QueryErrorCode.DTYPE),
        ("scalar_array", lambda: np.array(0.5, np.float32), QueryErrorCode.SHAPE),
        ("no_batch_dim", lambda: zeros(sample_shape, np.float32), QueryErrorCode.SHAPE),
        ("channels_last", lambda: zeros(channels_last, np.float32), QueryErrorCode.SHAPE),
        ("wrong_size", lambda: zeros(too_big, np.float32), QueryErrorCode.SHAPE),
        ("five_dims", lambda: zeros((2, 1, *sample_shape), np.float32), QueryErrorCode.SHAPE),
        ("empty", lambda: zeros((0, *sample_shape), np.float32), QueryErrorCode.EMPTY),
        ("torch_empty", lambda: torch.zeros(0, *sample_shape), QueryErrorCode.EMPTY),
        ("over_max_batch", lambda: ok(max_batch + 1), QueryErrorCode.BATCH_TOO_LARGE),
        ("nan", lambda: ok(3, np.nan), QueryErrorCode.NON_FINITE),
        ("pos_inf", lambda: ok(3, np.inf), QueryErrorCode.NON_FINITE),
        ("neg_inf", lambda: ok(3, -np.inf), QueryErrorCode.NON_FINITE),
        ("torch_nan", lambda: torch.full(two, float("nan")), QueryErrorCode.NON_FINITE),
        ("negative", lambda: ok(3, -0.5), QueryErrorCode.OUT_OF_RANGE),
        ("above_one", lambda: ok(3, 2.0), QueryErrorCode.OUT_OF_RANGE),
    ]  # fmt: skip
    return [MalformedQuery(kind, make, code) for kind, make, code in cases]
