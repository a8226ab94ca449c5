"""User text (tournament and study names, plug-in labels, which carry configured values) as it
may appear in generated documents: escaped for each, so a name is shown as written and never read
as markup (H6). Names are refused control characters and path separators at validation
(:mod:`orchestration.config`); what remains (quotes, ``<``, ``|``, ``$``) is escaped here."""

from __future__ import annotations

import html
from collections.abc import Iterable


def html_text(text: str) -> str:
    """Text for HTML and for plotly labels (plotly renders a subset of HTML and decodes
    entities, so the escaped text shows as written)."""
    return html.escape(text)


def markdown_cell(text: str) -> str:
    """Text for one cell of a Markdown table: no HTML, no column break, one line."""
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return " ".join(escaped.splitlines())


def markdown_rows(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """The lines of a Markdown table whose cells are already safe (see :func:`markdown_cell`)."""
    names = list(header)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def plot_text(text: str) -> str:
    """Text for a matplotlib label: a ``$`` would start mathtext."""
    return text.replace("$", r"\$")
