"""The runner every conformance check shares: named properties, each passing, failing or skipped.

A plug-in author gets one AssertionError naming the plug-in and the property that broke; the
``arena check`` command gets every property's outcome to print as a table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from arena.errors import InvalidParameters, one_line

T = TypeVar("T")
Status = Literal["pass", "fail", "skip"]
DETAIL_LIMIT = 300
"""characters of a failure's explanation kept (one line)"""


class NotApplicable(Exception):
    """Raised by a property that does not concern this plug-in (reported as skipped, with why)."""


@dataclass(frozen=True)
class PropertyResult:
    """One property of one plug-in, as it came out."""

    kind: str
    plugin: str
    name: str
    """the property's name"""
    status: Status
    detail: str = ""
    """why it failed or was skipped (one line)"""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


class ConformanceFailure(AssertionError):
    """A plug-in breaks the arena's contract; the message names it and every failed property."""

    def __init__(self, failures: Sequence[PropertyResult]) -> None:
        first = failures[0]
        parts = "; ".join(f"{f.name}: {f.detail}" for f in failures)
        super().__init__(f"{first.kind} {first.plugin!r} does not conform: {parts}")
        self.failures = list(failures)
        self.property = first.name
        self.plugin = first.plugin
        self.kind = first.kind


class Conformance:
    """One plug-in under test. Subclasses list ``PROPERTIES`` and define a method of each name
    (its docstring's first line says what is checked); expensive work shared by several
    properties goes through :meth:`once`, so running them one by one costs no more."""

    kind: ClassVar[str] = "plug-in"
    PROPERTIES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self._memo: dict[str, tuple[bool, Any]] = {}

    @classmethod
    def describe(cls, prop: str) -> str:
        """What ``prop`` checks, in one line."""
        doc = inspect.getdoc(getattr(cls, prop)) or ""
        return doc.splitlines()[0] if doc else prop

    def once(self, key: str, make: Callable[[], T]) -> T:
        """``make()`` computed once per plug-in under test; an exception is remembered too, so
        every property that needs a run that crashed reports the crash."""
        if key not in self._memo:
            try:
                self._memo[key] = (True, make())
            except Exception as exc:
                self._memo[key] = (False, exc)
        ok, value = self._memo[key]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def run(self, prop: str) -> PropertyResult:
        """Run one property and say how it came out (never raises for the plug-in's faults)."""
        if prop not in self.PROPERTIES:
            raise ValueError(f"{self.kind} property {prop!r} does not exist: {self.PROPERTIES}")
        check: Callable[[], None] = getattr(self, prop)
        try:
            check()
        except NotApplicable as exc:
            return self._result(prop, "skip", str(exc))
        except AssertionError as exc:
            return self._result(prop, "fail", str(exc) or "assertion failed")
        except Exception as exc:
            return self._result(prop, "fail", f"{type(exc).__name__}: {exc}")
        return self._result(prop, "pass")

    def results(self, only: Sequence[str] | None = None) -> list[PropertyResult]:
        """Every property (or those in ``only``), in order."""
        return [self.run(prop) for prop in (self.PROPERTIES if only is None else only)]

    def check(self, only: Sequence[str] | None = None) -> None:
        """Raise :class:`ConformanceFailure` naming every failed property."""
        failures = [r for r in self.results(only) if r.failed]
        if failures:
            raise ConformanceFailure(failures)

    def _result(self, prop: str, status: Status, detail: str = "") -> PropertyResult:
        shown = one_line(" ".join(detail.split()), DETAIL_LIMIT)
        return PropertyResult(self.kind, self.name, prop, status, shown)


def expect(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O`` and says what was expected."""
    if not condition:
        raise AssertionError(message)


def expect_rejected(
    build: Callable[[dict[str, Any]], object], cases: Sequence[dict[str, Any]]
) -> None:
    """Each of ``cases`` makes ``build`` raise InvalidParameters (a config error), nothing else."""
    for params in cases:
        try:
            build(params)
        except InvalidParameters:
            continue
        except Exception as exc:
            raise AssertionError(
                f"{params} raised {type(exc).__name__}, not InvalidParameters: validate "
                "fields in __post_init__ (arena.validation) and raise ValueError"
            ) from None
        raise AssertionError(f"{params} was accepted; it must raise InvalidParameters")
