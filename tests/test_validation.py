"""The shared hyperparameter checks of :mod:`arena.validation`: what each accepts, and messages
that name the field, the accepted range and the value."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from arena.errors import brief
from arena.validation import check_bool, check_choice, check_integer, check_number

NOT_NUMBERS = [True, False, None, "0.5", [0.5], np.int64(1), np.float32(0.5), 10**400]
"""numpy scalars other than float64 (a float subclass) are refused, as they always were"""


@pytest.mark.parametrize("value", [*NOT_NUMBERS, math.nan, math.inf, -math.inf])
def test_check_number_refuses_non_numbers_and_non_finite_values(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^x must be a finite number, got "):
        check_number("x", value)


@pytest.mark.parametrize("value", [0, -3, 2.5, 1e300, np.float64(0.1)])
def test_check_number_accepts_ints_and_floats(value: Any) -> None:
    check_number("x", value)


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "says"),
    [
        ({"low": 0}, [0, 0.0, 7], [-1e-9, -1], "x must be a finite number >= 0, got "),
        ({"low": 0, "low_open": True}, [1e-9, 3], [0, 0.0], "x must be a finite number > 0, got "),
        ({"high": 1}, [1, -5], [1.0000001], "x must be a finite number <= 1, got "),
        ({"high": 1, "high_open": True}, [0.999], [1], "x must be a finite number < 1, got "),
        ({"low": 0, "high": 0.5, "low_open": True}, [0.5, 0.001], [0, 0.6], r"\(0, 0.5\]"),
        ({"low": 0, "high": 1, "high_open": True}, [0, 0.5], [1, -0.1], r"\[0, 1\)"),
        ({"low": 0, "high": 1e3}, [1000], [1000.5], r"\[0, 1000\]"),
        ({"low": 0, "low_open": True, "allow_inf": True}, [math.inf, 1], [0, -math.inf], "inf]"),
    ],
)
def test_check_number_bounds_and_their_ends(
    bounds: dict[str, Any], inside: list[float], outside: list[float], says: str
) -> None:
    for value in inside:
        check_number("x", value, **bounds)
    for value in [*outside, math.nan, *NOT_NUMBERS]:
        with pytest.raises(ValueError, match=says) as info:
            check_number("x", value, **bounds)
        assert str(info.value).endswith(f"got {brief(value)}") and "\n" not in str(info.value)
        assert len(brief(value)) <= 60  # 10**400 is quoted by a prefix, not 401 digits


def test_allow_inf_still_refuses_nan() -> None:
    with pytest.raises(ValueError, match="nan"):
        check_number("x", math.nan, allow_inf=True)


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "says"),
    [
        ({}, [-(10**400), 0, 10**400], [], "x must be an integer, got "),
        ({"low": 1}, [1, 2], [0, -1], "x must be an integer >= 1, got "),
        ({"high": 8}, [8, -1], [9], "x must be an integer <= 8, got "),
        ({"low": 1, "high": 64}, [1, 64], [0, 65], "x must be an integer in 1..64, got "),
    ],
)
def test_check_integer(
    bounds: dict[str, Any], inside: list[int], outside: list[int], says: str
) -> None:
    for value in inside:
        check_integer("x", value, **bounds)
    for value in [*outside, True, False, 2.0, "3", None, np.int64(3)]:
        with pytest.raises(ValueError, match=says):
            check_integer("x", value, **bounds)


def test_check_bool_and_check_choice() -> None:
    check_bool("flag", True)
    check_bool("flag", False)
    for value in (0, 1, "true", None):
        with pytest.raises(ValueError, match=f"^flag must be true or false, got {value!r}$"):
            check_bool("flag", value)
    check_choice("kind", "b", ("a", "b"))
    with pytest.raises(ValueError, match=r"^kind must be one of a, b, got 'c'$"):
        check_choice("kind", "c", ("a", "b"))
    with pytest.raises(ValueError, match="got \\['a'\\]"):
        check_choice("kind", ["a"], ("a", "b"))  # unhashable values are refused, not a crash
