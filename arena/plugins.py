"""Plug-ins from outside the package: installed ones, and the ones a config names.

A plug-in is a Python module whose import registers defenses, attacks, architectures, datasets
or removals with the registries' decorators. Two ways in:

- **installed**: a package declares an entry point in the group :data:`ENTRY_POINT_GROUP`
  (``[project.entry-points."model_stealing_arena.plugins"] my_plugins = "my_package.plugins"``);
  every process that plays or checks matches imports it (:func:`load_installed_plugins`).
- **named by a config**: ``plugins: [my_package.plugins, ./my_defense.py]``, an importable
  module name or a ``.py`` file path (relative paths from the config's folder).

A file is read once, by the process that loads the config, and its source travels with every
match as a :class:`PluginSource`: Ray workers and actors, on this machine or on a cluster's other
nodes, execute the very text the driver validated (:func:`ensure_plugins`) rather than whatever a
path names on their disk. A module name must be importable wherever matches run (installed there,
or shipped with Ray's runtime environment).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import sys
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from arena.errors import PluginImportError

ENTRY_POINT_GROUP = "model_stealing_arena.plugins"
"""the entry-point group installed plug-in packages declare their modules in"""

_lock = threading.RLock()
_installed_loaded = False
_sources: dict[str, PluginSource] = {}
"""every plug-in this process loaded by reference, by module name, in load order"""


@dataclass(frozen=True)
class PluginSource:
    """A loaded plug-in as it is shipped to other processes: a module name, or a file's text."""

    ref: str
    """what the config wrote (a module name, or the file's path as resolved)"""
    module: str
    """the module name it is imported as (for a file: derived from its name and content)"""
    text: str | None = None
    """a file plug-in's source; ``None`` for an importable module"""


def is_file_ref(ref: str) -> bool:
    """Whether ``ref`` names a ``.py`` file rather than an importable module."""
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def plugin_source(ref: str, base: Path | None = None) -> PluginSource:
    """Resolve ``ref`` (a module name, or a ``.py`` path relative to ``base``) without importing
    it; a file that cannot be read is a :class:`PluginImportError`."""
    if not is_file_ref(ref):
        if not all(part.isidentifier() for part in ref.split(".")):
            raise PluginImportError(ref, "not a module name (a.b.c) nor a path to a .py file")
        return PluginSource(ref, ref)
    path = Path(resolved_ref(ref, base))
    if path.suffix != ".py":
        raise PluginImportError(ref, "a plug-in file must be a .py file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginImportError(ref, f"cannot read {path}: {exc}") from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    stem = "".join(ch if ch.isalnum() else "_" for ch in path.stem)
    return PluginSource(str(path), f"arena_plugin_{stem}_{digest}", text)


def import_plugin(ref: str, base: Path | None = None) -> types.ModuleType:
    """Import the plug-in ``ref`` (once per process) and remember it for shipping to workers."""
    return load_source(plugin_source(ref, base))


def resolved_ref(ref: str, base: Path | None = None) -> str:
    """``ref`` as :class:`PluginSource` records it: a module name, or a file's full path."""
    if not is_file_ref(ref):
        return ref
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() or base is None else base / path)


def sources_for(refs: Iterable[str]) -> tuple[PluginSource, ...]:
    """The loaded plug-ins ``refs`` name (resolved refs; importing any not yet loaded): what a
    driver ships to the workers that play its matches."""
    for ref in refs:
        import_plugin(ref)
    by_ref = {s.ref: s for s in loaded_sources()}
    return tuple(by_ref[resolved_ref(ref)] for ref in refs)


def load_source(source: PluginSource) -> types.ModuleType:
    """Import ``source`` in this process, once; any failure is one :class:`PluginImportError`."""
    with _lock:
        if source.module in _sources:
            return sys.modules[source.module]
        try:
            module = (
                importlib.import_module(source.module)
                if source.text is None
                else _exec_file(source)
            )
        except PluginImportError:
            raise
        except BaseException as exc:  # a plug-in's import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PluginImportError(source.ref, f"{type(exc).__name__}: {exc}") from None
        _sources[source.module] = source
        return module


def _exec_file(source: PluginSource) -> types.ModuleType:
    """Run a file plug-in's text as module ``source.module`` (kept in ``sys.modules``, so its
    classes pickle by reference to the same module on every worker)."""
    assert source.text is not None
    module = types.ModuleType(source.module)
    module.__file__ = source.ref
    sys.modules[source.module] = module
    try:
        code = compile(source.text, source.ref, "exec")
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[source.module]
        raise
    return module


def load_installed_plugins() -> None:
    """Import every installed plug-in (entry-point group :data:`ENTRY_POINT_GROUP`), once."""
    global _installed_loaded
    with _lock:
        if _installed_loaded:
            return
        _installed_loaded = True
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise PluginImportError(
                    f"{entry.name} = {entry.value}", f"{type(exc).__name__}: {exc}"
                ) from None


def loaded_sources() -> tuple[PluginSource, ...]:
    """The plug-ins this process loaded by reference, in load order (what workers must load)."""
    with _lock:
        return tuple(_sources.values())


def ensure_plugins(sources: Iterable[PluginSource]) -> None:
    """Make this process hold the same plug-ins as the driver: the installed ones, then
    ``sources`` (each imported once). Ray workers and actors call it before building any."""
    load_installed_plugins()
    for source in sources:
        load_source(source)
