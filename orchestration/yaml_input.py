"""The one reader of YAML files a user hands the arena (tournament and tuning configs, the tokens
file of ``arena serve``): bounded, so a hostile file costs a fraction of a second and one line.

YAML can describe far more than its size: ``a: &a [x, x, x]``, ``b: &b [*a, *a, *a]``, ... nested
nine deep is a few hundred bytes that PyYAML composes cheaply (aliases share one object) but that
anything walking the value (validation, an error message quoting it, a JSON dump) expands to
billions of elements. The walk is what explodes, so the reader refuses the document while it is
being composed, from its expanded size: every node counts once per path that reaches it. It also
refuses files above :data:`MAX_BYTES` (before reading them), nesting deeper than
:data:`MAX_DEPTH`, scalars longer than :data:`MAX_SCALAR_CHARS`, recursive aliases, text that is
not UTF-8, and anything that is not a regular file. Importing this module is cheap (no torch, no
Ray), so the CLI reads a config before it pays for the rest.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from arena.errors import ArenaError, one_line

MAX_BYTES = 1 << 20
"""largest file read (1 MiB); checked before reading"""
MAX_NODES = 50_000
"""largest document, counted as expanded (an alias counts the whole value it names)"""
MAX_DEPTH = 50
"""deepest nesting of sequences and mappings"""
MAX_SCALAR_CHARS = 4096
"""longest single value (below Python's 4,300-digit limit on int conversion)"""
TOO_BIG = f"the {MAX_BYTES:,} bytes (1 MiB) a YAML file may have"
PATH_LIMIT = 200
"""characters of a file name an error message shows"""

try:  # libyaml's event parser when PyYAML was built with it: 10x faster than the pure-Python one
    from yaml._yaml import CParser as _EventParser
except ImportError:  # pragma: no cover - PyYAML without libyaml

    class _EventParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class UnreadableYaml(ArenaError):
    """A YAML file that could not be turned into a document; ``reason`` is one short line."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{shown_path(path)}: {reason}")


class _Refused(yaml.YAMLError):
    """A document beyond a limit (raised while composing, before anything walks it)."""


def shown_path(path: Path) -> str:
    """A file name as error messages show it: one line, bounded."""
    return one_line(str(path), PATH_LIMIT)


class _BoundedLoader(Composer, _EventParser, SafeConstructor, Resolver):
    """PyYAML's safe loader whose composer counts what it builds: ``_sizes`` holds each composed
    node's expanded size, so an alias costs the size of the value it names."""

    def __init__(self, stream: str) -> None:
        _EventParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def _charge(self, nodes: int, event: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES:,} values, an alias counting each time it is used"
                f"{_where(event)}"
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's error, below
                size = self._sizes.get(id(target))
                if size is None:
                    raise _Refused(f"alias *{event.anchor} is used inside itself{_where(event)}")
                self._charge(size, event)
            return super().compose_node(parent, index)
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise _Refused(
                f"a value of {len(event.value):,} characters, more than {MAX_SCALAR_CHARS:,}"
                f"{_where(event)}"
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep{_where(event)}")
        before = self._nodes
        self._charge(1, event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node


def _where(at: Any) -> str:
    """`` (line 3, column 7)`` for an event or a mark (PyYAML counts from 0)."""
    mark = getattr(at, "start_mark", at)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line error as one line: context and problem, each with its place."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"
    parts = [
        f"{text}{_where(mark)}"
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        if text
    ]
    return "not valid YAML: " + ": ".join(parts)


def read_yaml_file(path: Path) -> Any:
    """The document of the YAML file at ``path``, within the limits above; any problem (missing,
    a directory, too big, not UTF-8, not YAML, an alias bomb, too deep) is an
    :class:`UnreadableYaml` whose ``reason`` is one line."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnreadableYaml(path, "file not found") from None
    except OSError as exc:
        raise UnreadableYaml(
            path, f"cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableYaml(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableYaml(path, "is not a regular file")
    if info.st_size > MAX_BYTES:
        raise UnreadableYaml(path, f"is {info.st_size:,} bytes, more than {TOO_BIG}")
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)  # a file growing (or /proc) cannot get past the cap
    except OSError as exc:
        raise UnreadableYaml(
            path, f"cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > MAX_BYTES:
        raise UnreadableYaml(path, f"is more than {TOO_BIG}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{data[exc.start]:02x} at offset {exc.start:,}"
        raise UnreadableYaml(path, f"is not UTF-8 text ({bad})") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise UnreadableYaml(path, f"refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise UnreadableYaml(path, one_line(_yaml_problem(exc), 300)) from None
    except (ValueError, OverflowError) as exc:  # e.g. a date 2024-13-45: SafeConstructor's own
        raise UnreadableYaml(path, one_line(f"not valid YAML: {exc}", 300)) from None
    finally:
        loader.dispose()
