"""Where a run keeps its files, passed explicitly from the CLI down to the code that writes them.

One value instead of an environment variable read deep inside the game layer: the CLI resolves
``--home`` (``ARENA_HOME``) once and every function that needs a folder takes an
:class:`ArenaHome` (or one of its folders) as an argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_VARIABLE = "ARENA_DATA_DIR"
"""points at a data folder elsewhere (one holding ``FashionMNIST/raw/``)"""


@dataclass(frozen=True)
class ArenaHome:
    """The folders of one arena home: caches, ledgers, studies, the local MLflow store."""

    root: Path
    victims: Path
    """trained victims and prepared defenses, by spec key"""

    @classmethod
    def at(cls, root: Path | str, victims: Path | None = None) -> ArenaHome:
        """A home rooted at ``root`` (made absolute); ``victims`` overrides the victim cache
        (tests share one across homes so victims are trained once)."""
        resolved = Path(root).expanduser().resolve()
        return cls(resolved, victims if victims is not None else resolved / "victims")

    @classmethod
    def from_environment(cls) -> ArenaHome:
        """``ARENA_HOME`` or ``./.arena``: for notebooks and scripts, never read by the CLI's
        code paths (the CLI passes its ``--home`` down)."""
        return cls.at(os.environ.get("ARENA_HOME", ".arena"))

    @property
    def data_dir(self) -> Path:
        """``ARENA_DATA_DIR`` if set, else ``<home>/data``."""
        if override := os.environ.get(DATA_DIR_VARIABLE):
            return Path(override).expanduser().resolve()
        return self.root / "data"

    @property
    def ledgers(self) -> Path:
        """budgets and audit logs of victim services"""
        return self.root / "ledgers"

    @property
    def studies(self) -> Path:
        """a tuning study's frontier plots and tables, one folder per study (its Optuna journal
        is ``optuna/<study>.journal``: :func:`orchestration.study_storage.storage_location`)"""
        return self.root / "studies"
