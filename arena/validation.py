"""Checks for plug-in hyperparameters: one way to say "this field must be a number in (0, 1]".

Defenses, attacks, removal attacks and serving targets are frozen dataclasses built from config
files (and, for targets, from untrusted callers), so each validates its fields in
``__post_init__``. The checks are always the same few: a real number (never a ``bool``, which
Python counts as an int; never NaN or infinity) within a range, an integer within a range, a
``bool``, one of a few names. Written out by hand in every plug-in they drifted apart in wording
and in detail (which ends are open, whether NaN gets through); these functions are the one
version. Each raises :class:`ValueError` with a one-line message naming the field, what it
accepts and the value it got (a short prefix: :func:`arena.errors.brief`, so a hostile value
cannot flood the message); :func:`arena.registry.build_plugin` turns that into
:class:`~arena.errors.InvalidParameters`, which config loading reports at the field's dotted path.

Only the standard library and :mod:`arena.errors` are used, so anything in ``arena`` or
``agents`` may import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from arena.errors import brief

__all__ = ["check_bool", "check_choice", "check_integer", "check_number"]


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> None:
    """Reject anything but a real number within the bounds given.

    ``low`` and ``high`` are inclusive unless ``low_open`` / ``high_open``; ``None`` leaves that
    side unbounded. ``int`` and ``float`` (so numpy's float64) are numbers; ``bool`` is not. NaN
    and integers too large for a float are always refused, infinities unless ``allow_inf``, in
    which case the bounds still apply (``low=0, low_open=True, allow_inf=True`` is ``(0, inf]``).
    """
    if not _is_number_within(value, low, high, low_open, high_open, allow_inf):
        wanted = _number_range(low, high, low_open, high_open, allow_inf)
        raise ValueError(f"{name} must be {wanted}, got {brief(value)}")


def check_integer(
    name: str, value: object, *, low: int | None = None, high: int | None = None
) -> None:
    """Reject anything but an ``int`` (not a ``bool``, not a float such as ``2.0``) in
    ``low..high``, both ends inclusive; ``None`` leaves that side unbounded."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        raise ValueError(f"{name} must be {_integer_range(low, high)}, got {brief(value)}")


def check_bool(name: str, value: object) -> None:
    """Reject anything but ``True`` or ``False`` (``0`` and ``1`` included)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {brief(value)}")


def check_choice(name: str, value: object, options: Sequence[object]) -> None:
    """Reject a value that is not one of ``options`` (compared with ``==``)."""
    if value not in options:
        known = ", ".join(str(option) for option in options)
        raise ValueError(f"{name} must be one of {known}, got {brief(value)}")


def _is_number_within(
    value: object,
    low: float | None,
    high: float | None,
    low_open: bool,
    high_open: bool,
    allow_inf: bool,
) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        as_float = float(value)
    except OverflowError:  # an int too large for a float: no consumer could use it
        return False
    if math.isnan(as_float) or (math.isinf(as_float) and not allow_inf):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _number_range(
    low: float | None, high: float | None, low_open: bool, high_open: bool, allow_inf: bool
) -> str:
    if (low is None or high is None) and not allow_inf:
        if low is not None:
            return f"a finite number {'>' if low_open else '>='} {_bound(low)}"
        if high is not None:
            return f"a finite number {'<' if high_open else '<='} {_bound(high)}"
        return "a finite number"
    # both ends bounded, or infinities allowed: an interval ("-inf" and "inf" are included)
    left = "[-inf" if low is None else ("(" if low_open else "[") + _bound(low)
    right = "inf]" if high is None else _bound(high) + (")" if high_open else "]")
    return f"a number in {left}, {right}"


def _integer_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer in {low}..{high}"
    if low is not None:
        return f"an integer >= {low}"
    if high is not None:
        return f"an integer <= {high}"
    return "an integer"


def _bound(bound: float) -> str:
    """A bound as written in a config: ``0`` not ``0.0``, ``1000`` not ``1000.0``."""
    short = f"{bound:g}"
    return short if float(short) == bound else repr(bound)
