"""Typed errors: every user mistake surfaces as one of these, never as a bare traceback."""

from __future__ import annotations

import reprlib
import unicodedata
from enum import StrEnum

QUOTE_LIMIT = 60
"""characters of a user-supplied value an error message quotes (hostile configs, H5)"""

UNPRINTABLE = ("Cc", "Cf", "Cs", "Zl", "Zp")
"""Unicode categories never shown raw: controls (NUL, ESC, line breaks), format characters
(bidi overrides), lone surrogates, line and paragraph separators"""

_QUOTER = reprlib.Repr()
_QUOTER.maxlevel = 2
_QUOTER.maxstring = _QUOTER.maxother = _QUOTER.maxlong = QUOTE_LIMIT


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters: control characters (line
    breaks, terminal escapes, NUL) are shown escaped and the rest is cut with an ellipsis, so a
    message about a hostile value can neither flood nor forge the output."""
    shown = "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in UNPRINTABLE
        else ch
        for ch in text[: limit + 1]
    )
    return shown if len(shown) <= limit and len(text) <= limit else shown[: limit - 1] + "…"


def first_unprintable(text: str) -> int | None:
    """The index of the first :data:`UNPRINTABLE` character of ``text``, if any."""
    return next((i for i, ch in enumerate(text) if unicodedata.category(ch) in UNPRINTABLE), None)


def brief(value: object) -> str:
    """A value as an error message quotes it: its ``repr``, at most :data:`QUOTE_LIMIT`
    characters, nested containers abbreviated without walking them (an alias bomb stays
    cheap)."""
    return one_line(_QUOTER.repr(value), QUOTE_LIMIT)


class ArenaError(Exception):
    """Base of every error the arena raises on purpose."""


class RejectionCode(StrEnum):
    """Every reason a victim service refuses a batch (never charged), defined once: the oracle
    raises a typed error for each, and the HTTP endpoint answers each with its
    :attr:`http_status`."""

    NOT_ARRAY = "not_array"
    DTYPE = "dtype"
    SHAPE = "shape"
    EMPTY = "empty"
    BATCH_TOO_LARGE = "batch_too_large"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_ATTACKER = "unknown_attacker"
    QUERY_ID_REUSED = "query_id_reused"
    TARGETS = "targets"
    BUDGET_EXHAUSTED = "budget_exhausted"
    REFUSED = "refused"
    """a detector flagged the caller"""
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    """the victim is down or did not answer in time (it is being restarted)"""
    WORK_REQUIRED = "work_required"
    """the victim asks for proof of work and the batch came without a solution"""
    WORK_INVALID = "work_invalid"
    """the proof of work does not solve this query's pending challenge (wrong, reused, foreign
    or unknown after a restart)"""

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self, 400)

    @property
    def malformed(self) -> bool:
        """The batch itself is wrong (:class:`InvalidQuery`); the others are about the account,
        a detector or the victim's health."""
        return self not in _NOT_MALFORMED


_HTTP_STATUS = {
    RejectionCode.BATCH_TOO_LARGE: 413,
    RejectionCode.UNKNOWN_ATTACKER: 401,
    RejectionCode.QUERY_ID_REUSED: 409,
    RejectionCode.BUDGET_EXHAUSTED: 402,
    RejectionCode.REFUSED: 403,
    RejectionCode.OVERLOADED: 429,
    RejectionCode.UNAVAILABLE: 503,
    RejectionCode.WORK_REQUIRED: 428,
    RejectionCode.WORK_INVALID: 422,
}
_NOT_MALFORMED = frozenset(
    {
        RejectionCode.BUDGET_EXHAUSTED,
        RejectionCode.REFUSED,
        RejectionCode.OVERLOADED,
        RejectionCode.UNAVAILABLE,
        RejectionCode.WORK_REQUIRED,
        RejectionCode.WORK_INVALID,
    }
)
QueryErrorCode = RejectionCode
"""the name :class:`InvalidQuery` callers know the codes by"""


class InvalidQuery(ArenaError):
    """A malformed query. Nothing was charged."""

    def __init__(self, code: QueryErrorCode, message: str) -> None:
        super().__init__(f"[{code.value}] {message}")
        self.code = code
        self.message = message


class QueryRefused(ArenaError):
    """A detector flagged this caller and the victim refuses its queries. Nothing was charged."""

    def __init__(self, message: str) -> None:
        super().__init__(f"[refused] {message}")
        self.message = message


class BudgetExhausted(ArenaError):
    """The batch needs more queries than the attacker has left. Nothing was charged."""

    def __init__(self, requested: int, remaining: int) -> None:
        super().__init__(f"batch of {requested} queries exceeds the remaining budget {remaining}")
        self.requested = requested
        self.remaining = remaining


class Overloaded(ArenaError):
    """The victim's queue is full; retry later. Nothing was charged."""

    def __init__(self, message: str) -> None:
        super().__init__(f"[overloaded] {message}")
        self.message = message


class VictimUnavailable(ArenaError):
    """The victim did not answer in time or is down (it is restarted when it can be).

    Nothing is charged twice: a retry of the same query id returns the answer it was charged for.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"[unavailable] {message}")
        self.message = message


class WorkRejected(ArenaError):
    """The victim asks for proof of work per batch and none, or a wrong one, came with it.
    Nothing was charged; :class:`~arena.oracle.Oracle` solves the puzzles itself."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(f"[{code.value}] {message}")
        self.code = code
        self.message = message


class UnknownPlugin(ArenaError):
    """A defense, attack, architecture or dataset name that is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(f"unknown {kind} {brief(name)}; known: {', '.join(sorted(known))}")
        self.kind = kind
        self.name = name
        self.known = known


class InvalidParameters(ArenaError):
    """A plug-in was given hyperparameters it does not accept or values out of range."""


class DatasetMissing(ArenaError):
    """A dataset is not on disk and cannot be downloaded; the message says how to get it."""


class PluginImportError(ArenaError):
    """A plug-in module or file named in a config (or installed) failed to import."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"plug-in {brief(ref)} failed to import: {one_line(reason, 300)}")
        self.ref = ref
        self.reason = reason


class InvalidDataset(ArenaError):
    """A user's dataset whose files are there but unusable (mixed image sizes, bad labels);
    the message names the file and the fix."""


class VerificationFailed(ArenaError):
    """Ownership verification could not judge a suspect model: it raised, or answered NaN or
    infinity, on the verifier's points. The verdict is recorded as unverified, with the reason."""
