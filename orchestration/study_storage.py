"""Where a tuning study's Optuna storage is, and the one way it is opened.

A storage is an RDB URL, used as written, or a journal file (by default
``ARENA_HOME/optuna/<study>.journal``) made absolute and repaired before it is opened
(:mod:`orchestration.journal_repair`). ``arena tune``, its dashboard hint and ``arena frontier``
all resolve and open studies here, so they find the same file and read it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from arena.errors import ArenaError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


class StudyError(ArenaError):
    """A study that cannot be opened or run (bad storage, a study of another shape)."""


def named_storage(storage: str) -> str | Path:
    """A storage as a config's ``storage`` or ``--storage`` names it: an RDB URL as written, or
    the journal file's absolute path (Optuna's own stale-lock release needs one)."""
    return storage if "://" in storage else Path(storage).expanduser().resolve()


def storage_location(study: str, storage: str | None, home: Path) -> str | Path:
    """Where ``study`` is stored: the named ``storage``, else its journal under ``home``."""
    if storage:
        return named_storage(storage)
    return (home / "optuna" / f"{study}.journal").expanduser().resolve()


def open_storage_at(where: str | Path) -> BaseStorage:
    """The storage at a :func:`storage_location`: an RDB, or a journal that a killed writer's
    stale lock or torn last record is first cleared from, or the study could not be read."""
    # imported here: config validation imports this module and must not pay for Optuna
    from optuna.storages import RDBStorage

    from orchestration.journal_repair import open_journal

    return RDBStorage(where) if isinstance(where, str) else open_journal(where)
