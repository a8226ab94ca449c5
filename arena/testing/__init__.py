"""The conformance kit: the contract every plug-in honours, as checks a plug-in author calls from
their own tests (and ``arena check`` runs from the command line)::

    import my_plugins  # registers them
    from arena.testing import check_attack, check_defense

    def test_my_defense() -> None:
        check_defense("my_defense")

Each ``check_*`` runs the properties of its kind and raises :class:`ConformanceFailure` (an
AssertionError) naming the plug-in and every property that failed. The ``*Conformance`` classes
run them one at a time (``results()``, ``run(name)``; ``PROPERTIES`` lists them) and share the
expensive work (a theft, a prepared defense) between them. The arena's own tests use these same
checks on every built-in plug-in.
"""

from arena.testing.architectures import ArchitectureConformance, check_architecture
from arena.testing.attacks import AttackConformance, check_attack
from arena.testing.core import Conformance, ConformanceFailure, NotApplicable, PropertyResult
from arena.testing.datasets import DatasetConformance, check_dataset
from arena.testing.defenses import DefenseConformance, check_defense
from arena.testing.discovery import added, conformance_for, registered
from arena.testing.removals import RemovalConformance, check_removal

__all__ = [
    "ArchitectureConformance",
    "AttackConformance",
    "Conformance",
    "ConformanceFailure",
    "DatasetConformance",
    "DefenseConformance",
    "NotApplicable",
    "PropertyResult",
    "RemovalConformance",
    "added",
    "check_architecture",
    "check_attack",
    "check_dataset",
    "check_defense",
    "check_removal",
    "conformance_for",
    "registered",
]
