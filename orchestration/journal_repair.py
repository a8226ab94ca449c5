"""Make an Optuna journal file usable again after a writer was killed (RELIABILITY D3).

Two things a SIGKILL can leave behind, both handled when a driver opens the storage:

- a **torn tail**: the killed writer's last record is only partly on disk. Optuna skips it on
  read, but the next append is glued onto it and every later read fails, so the study cannot be
  resumed. The torn bytes are cut off (kept in ``<journal>.torn``); a complete record that was
  glued onto them is kept.
- a **stale lock**: Optuna's ``JournalFileSymlinkLock`` is a symlink ``<journal>.lock`` that
  records no owner, and Optuna itself only forces it after 30 s without journal writes. A writer
  holds it for one append (milliseconds), so a lock that has stayed the same for
  ``STALE_LOCK_S`` is stale and is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

LOCK_SUFFIX = ".lock"
"""what ``JournalFileSymlinkLock`` appends to the journal path (optuna.storages.journal._file)"""
TORN_SUFFIX = ".torn"
STALE_LOCK_S = 10.0
"""a lock unchanged this long is stale: appends hold it for milliseconds"""
_BLOCK = 64 * 1024

log = logging.getLogger(__name__)


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + LOCK_SUFFIX)


def open_journal(journal: Path) -> JournalStorage:
    """Optuna storage on a journal file, repaired first if a killed writer left a stale lock or a
    torn last record. The path is made absolute: Optuna's own stale-lock release needs it."""
    journal = journal.expanduser().resolve()
    release_stale_lock(journal)
    repair_journal(journal)
    return JournalStorage(JournalFileBackend(str(journal)))


def release_stale_lock(journal: Path, stale_after_s: float = STALE_LOCK_S) -> float | None:
    """Remove the journal's lock if it has stayed the same for ``stale_after_s``; return its age
    in seconds when it was removed, None when there was none or it is in use.

    A younger lock is watched until it is that old; if it is released or replaced in the
    meantime a live writer is using the journal, and it is left alone."""
    lock = lock_path(journal)
    try:
        first = os.lstat(lock)
    except FileNotFoundError:
        return None
    while (age := time.time() - first.st_mtime) < stale_after_s:
        time.sleep(min(0.05, stale_after_s - age))
        try:
            again = os.lstat(lock)
        except FileNotFoundError:
            return None  # released: a live writer
        if (again.st_ino, again.st_mtime_ns) != (first.st_ino, first.st_mtime_ns):
            return None  # taken again: live writers
    # rename first (as Optuna's own release does) so a writer that took the lock in between
    # is noticed: then the renamed link is not the one judged stale, and it is put back
    moved = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(lock, moved)
    except FileNotFoundError:
        return None
    taken = os.lstat(moved)
    if (taken.st_ino, taken.st_mtime_ns) != (first.st_ino, first.st_mtime_ns):
        # a live writer's lock: put it back unless yet another writer holds the lock now
        with contextlib.suppress(FileExistsError):
            os.link(moved, lock, follow_symlinks=False)
        os.unlink(moved)
        return None
    os.unlink(moved)
    log.warning("removed a stale Optuna journal lock %s (%.0f s old)", lock, age)
    return age


def repair_journal(journal: Path) -> int:
    """Cut a torn last record off ``journal`` and return how many bytes were removed (0 when the
    tail is whole). The check runs under the journal's lock, so a record another process is
    writing right now is never mistaken for a torn one."""
    if not _torn_tail(journal):
        return 0
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()
    try:
        cut = _torn_tail(journal)
        if cut is None:
            return 0
        start, keep = cut
        with open(journal, "r+b") as f:
            f.seek(start)
            tail = f.read()
            removed = tail[: len(tail) - len(keep)]
            with open(_torn_copy(journal), "ab") as backup:
                backup.write(removed + b"\n")
                backup.flush()
                os.fsync(backup.fileno())
            f.seek(start)
            f.truncate()
            if keep:
                f.write(keep)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    log.warning(
        "repaired a torn record at the end of %s: %d byte(s) removed, kept in %s",
        journal,
        len(removed),
        _torn_copy(journal),
    )
    return len(removed)


def _torn_copy(journal: Path) -> Path:
    return journal.with_name(journal.name + TORN_SUFFIX)


def _torn_tail(journal: Path) -> tuple[int, bytes] | None:
    """Where the last line starts and the bytes to keep from it (a whole record that was glued
    onto torn bytes, with its newline), or None when the last line is a whole record."""
    try:
        size = journal.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(journal, "rb") as f:
        start = _last_line_start(f, size)
        f.seek(start)
        line = f.read()
    if line.endswith(b"\n") and _is_record(line):
        return None
    if not line.endswith(b"\n"):
        return start, b""
    # a torn record followed by the next append on the same line: keep the appended record
    for at in range(1, len(line)):
        if line[at : at + 1] == b"{" and _is_record(line[at:]):
            return start, line[at:]
    return start, b""


def _last_line_start(f: BinaryIO, size: int) -> int:
    """Offset just after the last newline before the final byte (0 if there is none)."""
    end = size - 1  # a newline in the final byte ends the last line, it does not start one
    while end > 0:
        begin = max(0, end - _BLOCK)
        f.seek(begin)
        chunk = f.read(end - begin)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return begin + at + 1
        end = begin
    return 0


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
