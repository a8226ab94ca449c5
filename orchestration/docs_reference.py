"""Markdown generated from the code for the docs: the plug-in tables (``arena list --markdown``)
and the config reference (the fields of the config models with their attribute docstrings).

The committed docs hold each generated block between marker comments, ``<!-- generated: KEY -->``
and ``<!-- end generated -->``; ``scripts/gen_docs.py --write`` rewrites them and a test fails
when they differ from what the code generates, so the tables cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import re
import textwrap
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from orchestration.escaping import markdown_rows

if TYPE_CHECKING:
    from pydantic import BaseModel

    from arena.attacker import Attacker
    from arena.registry import Registry

FIX_COMMAND = "python scripts/gen_docs.py --write"
"""what to run when the committed blocks are stale (named in every stale-docs message)"""
BUILTIN_PACKAGES = ("arena", "agents")
"""plug-ins defined in these packages are built in; anything else was installed or loaded"""
PLUGIN_TABLES = "arena list --markdown --builtin-only"
CONFIG_REFERENCE = "config reference"
END = "<!-- end generated -->"
BLOCK = re.compile(r"<!-- generated: (?P<key>[^>]*?) -->\n(?P<body>.*?)" + re.escape(END), re.S)


# --- plug-in tables ---------------------------------------------------------------------------


def is_builtin(item: object) -> bool:
    """True for a plug-in defined in the arena itself (not installed or loaded from a file)."""
    module = getattr(item, "__module__", None) or ""
    return module.split(".")[0] in BUILTIN_PACKAGES


def _cell(text: object) -> str:
    """One table cell: a single line with pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value: Any) -> str:
    """A default as a config file would write it (YAML flow style, JSON-compatible)."""
    from pydantic import BaseModel
    from pydantic_core import to_jsonable_python

    def plain(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json", exclude_defaults=True)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return to_jsonable_python(v)

    shown = plain(value)
    if isinstance(shown, str):
        return shown
    if isinstance(shown, float):
        return f"{shown:g}"
    return json.dumps(shown, ensure_ascii=False, separators=(", ", ": "))


def _dataclass_params(cls: Any, options: bool = False) -> list[tuple[str, Any]]:
    """``(name, default)`` of a plug-in's hyperparameters; generic options only if asked."""
    from arena.registry import OPTION

    if not dataclasses.is_dataclass(cls):
        return []
    params = []
    for f in dataclasses.fields(cls):
        if not f.init or bool(f.metadata.get(OPTION)) != options:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        params.append((f.name, default))
    return params


def _params_cell(cls: Any) -> str:
    params = _dataclass_params(cls)
    return ", ".join(f"`{name}={_value(default)}`" for name, default in params) or "—"


def _space_cell(space: dict[str, Any]) -> str:
    from arena.defenses import Choice, FloatRange, IntRange

    parts = []
    for name, declared in space.items():
        if isinstance(declared, Choice):
            parts.append(f"`{name}` ∈ {{{', '.join(_value(o) for o in declared.options)}}}")
        elif isinstance(declared, IntRange):
            parts.append(f"`{name}` {declared.low}..{declared.high}")
        elif isinstance(declared, FloatRange):
            log = " log" if declared.log else ""
            parts.append(f"`{name}` [{declared.low:g}, {declared.high:g}]{log}")
    return ", ".join(parts) or "—"


def _attack_tag(cls: type[Attacker]) -> str:
    """How the attack table marks what is not an API adversary: an upper bound, or a
    privileged threat model (never a defense's strongest adversary)."""
    from arena.knowledge import API

    if cls.upper_bound:
        return " (upper bound)"
    return "" if cls.threat_model == API else f" (threat model: {cls.threat_model})"


def _rows(registry: Registry[Any], builtin_only: bool) -> list[tuple[str, Any, str]]:
    """``(name, plug-in, "vN")`` of a registry, sorted by name."""
    return [
        (name, registry.get(name), f"v{registry.version(name)}")
        for name in registry.names()
        if not builtin_only or is_builtin(registry.get(name))
    ]


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    return markdown_rows(header, ([_cell(c) for c in row] for row in rows))


DEFENSE_FLAGS = {
    "needs_training": "training-time",
    "builds_models": "builds models ahead",
    "preserves_argmax": "keeps the argmax",
    "answers_labels_only": "labels only",
    "stateful": "per-caller state",
    "detector": "detector",
    "zoo_only": "model zoos only",
}
"""the Defense class flags shown in the table, as words"""


def plugin_tables(builtin_only: bool = False) -> str:
    """Every registry (and the attack suites) as markdown tables: what ``arena list`` shows,
    plus each plug-in's parameters with their defaults, and the defenses' search spaces."""
    import agents  # noqa: F401  (registers the attacks)
    from arena.attacker import ATTACKS
    from arena.data import DATASET_FORMS, DATASETS
    from arena.defenses import DEFENSES
    from arena.models import ARCHITECTURES
    from arena.registry import first_doc_line
    from arena.removal import REMOVALS
    from orchestration.suites import SUITES

    out: list[str] = ["### Defenses", ""]
    out += _table(
        ["name", "version", "what it does", "kind", "parameters (defaults)", "search space"],
        (
            [
                f"`{name}`",
                version,
                first_doc_line(cls),
                ", ".join(word for flag, word in DEFENSE_FLAGS.items() if getattr(cls, flag))
                or "—",
                _params_cell(cls),
                _space_cell(cls.search_space),
            ]
            for name, cls, version in _rows(DEFENSES, builtin_only)
        ),
    )
    attacks = _rows(ATTACKS, builtin_only)
    out += ["", "### Attacks", ""]
    out += _table(
        ["name", "version", "what it does", "query pool", "built for", "parameters (defaults)"],
        (
            [
                f"`{name}`" + _attack_tag(cls),
                version,
                first_doc_line(cls),
                "needs one" if cls.needs_pool else "no",
                cls.victim_kind or "any classifier",
                _params_cell(cls),
            ]
            for name, cls, version in attacks
        ),
    )
    takers: dict[tuple[str, str], list[str]] = {}
    for name, cls, _ in attacks:
        for option, default in _dataclass_params(cls, options=True):
            takers.setdefault((option, _value(default)), []).append(name)
    out += ["", "Options (left out of match keys while at their default):", ""]
    out += [
        f"- `{option}={default}`: "
        + ("every attack" if len(names) == len(attacks) else ", ".join(names))
        for (option, default), names in takers.items()
    ]
    out += ["", "### Attack suites (`attacks: [{suite: NAME}]`)", ""]
    out += _table(
        ["suite", "attacks"],
        (
            [f"`{suite}`", ", ".join(_suite_entry(entry) for entry in entries)]
            for suite, entries in sorted(SUITES.items())
        ),
    )
    for title, registry in (
        ("Architectures", ARCHITECTURES),
        ("Datasets", DATASETS),
        ("Dataset forms (`dataset: FORM:PATH`)", DATASET_FORMS),
    ):
        out += ["", f"### {title}", ""]
        out += _table(
            ["name", "version", "what it is"],
            ([f"`{n}`", v, first_doc_line(item)] for n, item, v in _rows(registry, builtin_only)),
        )
    out += ["", "### Watermark removals (`removals:`)", ""]
    out += _table(
        ["name", "version", "what it does", "parameters (defaults)"],
        (
            [f"`{n}`", v, first_doc_line(cls), _params_cell(cls)]
            for n, cls, v in _rows(REMOVALS, builtin_only)
        ),
    )
    return "\n".join(out) + "\n"


def _suite_entry(entry: dict[str, Any]) -> str:
    params = entry.get("params", {})
    shown = ", ".join(f"{k}={_value(v)}" for k, v in params.items())
    return f"`{entry['name']}({shown})`" if shown else f"`{entry['name']}`"


# --- config reference -------------------------------------------------------------------------


def _rst_to_markdown(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]*)`", r"`\1`", text)
    return text.replace("``", "`")


def field_docs(model: type[Any]) -> dict[str, str]:
    """Attribute docstrings (a string right under a field) of a class and its bases."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls.__module__.split(".")[0] not in (*BUILTIN_PACKAGES, "orchestration"):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = _rst_to_markdown(inspect.cleandoc(after.value.value))
    return docs


def _constraint(meta: object) -> str | None:
    for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        bound = getattr(meta, attr, None)
        if bound is not None:
            return f"{sign} {bound:g}" if isinstance(bound, float) else f"{sign} {bound}"
    if getattr(meta, "min_length", None) is not None:
        return f"length ≥ {meta.min_length}"  # type: ignore[attr-defined]
    if getattr(meta, "max_length", None) is not None:
        return f"length ≤ {meta.max_length}"  # type: ignore[attr-defined]
    if getattr(meta, "pattern", None) is not None:
        return f"matches `{meta.pattern}`"  # type: ignore[attr-defined]
    return None


def _constraints(metadata: Iterable[object]) -> str:
    found = [c for c in map(_constraint, metadata) if c]
    return f" ({', '.join(found)})" if found else ""


def _type(annotation: Any) -> str:
    """A field's type as a config writer reads it (``list[int (> 0)]``, ``str | null``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0]) + _constraints(args[1:])
    if origin in (Union, types.UnionType):
        shown = " | ".join(_type(a) for a in args if a is not type(None))
        return shown + (" | null" if type(None) in args else "")
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type(args[0])}]" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[1])}" if args else "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: Any) -> str:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        return f"`{_value(info.default_factory())}`"
    if info.default is PydanticUndefined:
        return "required"
    return f"`{_value(info.default)}`"


def model_table(model: type[BaseModel]) -> list[str]:
    """One config model as a markdown table: field, type, default, meaning."""
    docs = field_docs(model)
    return _table(
        ["field", "type", "default", "meaning"],
        (
            [
                f"`{name}`",
                _type(info.annotation) + _constraints(info.metadata),
                _default(info),
                docs.get(name, ""),
            ]
            for name, info in model.model_fields.items()
        ),
    )


def config_reference() -> str:
    """Every config model's fields, from the models themselves (tournament and tuning configs)."""
    from arena.specs import BenignSpec, PluginSpec, VictimSpec
    from orchestration.config import BestResponse, RaySettings, TournamentConfig, TrackingSettings
    from orchestration.tune_config import RangeOverride, TuneConfig

    sections: list[tuple[str, type[BaseModel]]] = [
        ("Tournament config (`arena tournament CONFIG`)", TournamentConfig),
        ("Tuning config (`arena tune CONFIG`)", TuneConfig),
        ("`victims:` entries, `victim:` (VictimSpec)", VictimSpec),
        ("`defenses:`, `attacks:`, `removals:` entries (PluginSpec)", PluginSpec),
        ("`search_space:` entries of a tuning config (RangeOverride)", RangeOverride),
        ("`best_response:` (BestResponse)", BestResponse),
        ("`benign:` (BenignSpec)", BenignSpec),
        ("`ray:` (RaySettings)", RaySettings),
        ("`tracking:` (TrackingSettings)", TrackingSettings),
    ]
    out: list[str] = []
    for title, model in sections:
        summary = (inspect.getdoc(model) or "").split("\n\n")[0]
        out += [f"### {title}", "", _cell(_rst_to_markdown(summary)), ""]
        out += [*model_table(model), ""]
    return "\n".join(out)


# --- the blocks in the committed docs -----------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    PLUGIN_TABLES: lambda: plugin_tables(builtin_only=True),
    CONFIG_REFERENCE: config_reference,
}
"""marker key -> the markdown that belongs between the markers"""


def doc_files(root: Path) -> list[Path]:
    """The files that may hold generated blocks: the README and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regenerate(text: str, generated: dict[str, str]) -> str:
    """``text`` with every generated block's body replaced by the current output."""

    def fill(match: re.Match[str]) -> str:
        key = match["key"]
        if key not in generated:
            raise KeyError(f"unknown generated block {key!r}; known: {', '.join(generated)}")
        return f"<!-- generated: {key} -->\n\n{generated[key].strip()}\n\n{END}"

    return BLOCK.sub(fill, text)


def stale_files(root: Path, write: bool = False) -> list[Path]:
    """The doc files whose generated blocks differ from the code's output (rewritten if
    ``write``); each generator runs once."""
    generated = {key: make() for key, make in GENERATORS.items()}
    stale = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        fresh = regenerate(text, generated)
        if fresh != text:
            stale.append(path)
            if write:
                path.write_text(fresh, encoding="utf-8")
    return stale


def block_keys(root: Path) -> dict[str, list[Path]]:
    """Which files hold which generated blocks."""
    found: dict[str, list[Path]] = {}
    for path in doc_files(root):
        for match in BLOCK.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match["key"], []).append(path)
    return found
