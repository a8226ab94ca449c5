"""``arena check``: import one plug-in, find what it registered, run the conformance kit on each.

The built-in plug-ins are imported first and installed ones never, so the registries' names
before and after the import are exactly the plug-in's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arena.attacker import ATTACKS
from arena.errors import ArenaError
from arena.plugins import import_plugin
from arena.registry import build_plugin
from arena.testing import PropertyResult, added, conformance_for, registered
from orchestration.suites import SUITES

SUITE_PROPERTY = "attacks_build"


class NothingRegistered(ArenaError):
    """The plug-in imported but registered no defense, attack, architecture, dataset, removal
    or suite."""


@dataclass(frozen=True)
class CheckReport:
    """What one plug-in registered and how each of its properties came out."""

    ref: str
    found: list[tuple[str, str]]
    """(kind, name) of every plug-in the import registered"""
    results: list[PropertyResult]

    @property
    def failed(self) -> list[PropertyResult]:
        return [r for r in self.results if r.failed]


def check_plugin(
    ref: str, data_dir: Path, on_plugin: Callable[[str, str], None] | None = None
) -> CheckReport:
    """Import ``ref`` (a module name or a ``.py`` file) and check everything it registers;
    ``on_plugin(kind, name)`` is told before each is checked. Raises PluginImportError when it
    does not import, NothingRegistered when it registers nothing."""
    import agents  # noqa: F401  (the built-in attacks, so they are not taken for the plug-in's)

    before, suites_before = registered(), set(SUITES)
    import_plugin(ref)
    found = added(before, registered())
    found += [("suite", name) for name in sorted(set(SUITES) - suites_before)]
    if not found:
        raise NothingRegistered(
            f"{ref} imported but registered nothing; decorate each plug-in with its registry's "
            "register (e.g. @DEFENSES.register('my_defense'))"
        )
    results: list[PropertyResult] = []
    for kind, name in found:
        if on_plugin is not None:
            on_plugin(kind, name)
        if kind == "suite":
            results.append(suite_result(name))
        else:
            results += conformance_for(kind, name, data_dir).results()
    return CheckReport(ref, found, results)


def suite_result(name: str) -> PropertyResult:
    """A suite's attacks are registered and build with the suite's hyperparameters."""
    for entry in SUITES[name]:
        try:
            build_plugin(ATTACKS, entry["name"], entry.get("params", {}))
        except (ArenaError, KeyError, TypeError) as exc:
            return PropertyResult("suite", name, SUITE_PROPERTY, "fail", f"{entry}: {exc}")
    return PropertyResult("suite", name, SUITE_PROPERTY, "pass")
