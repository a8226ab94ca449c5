"""The docs stay true: the generated blocks (plug-in tables, config reference) match the code,
every relative link reaches a file and heading of the repository, and no page points outside it.

Fast and in-process (no Ray); it reads the committed files and writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.docs_reference import (
    CONFIG_REFERENCE,
    FIX_COMMAND,
    PLUGIN_TABLES,
    block_keys,
    doc_files,
    plugin_tables,
    stale_files,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = doc_files(ROOT)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
OUTSIDE = ("../shared", "DESIGN.md", "RELIABILITY.md", "DESIGN §", "RELIABILITY §")
"""references to documents that are not in the repository"""


def test_generated_blocks_match_the_code() -> None:
    stale = [str(p.relative_to(ROOT)) for p in stale_files(ROOT)]
    assert not stale, f"generated docs out of date in {', '.join(stale)}: run `{FIX_COMMAND}`"


def test_every_generator_has_its_block() -> None:
    found = block_keys(ROOT)
    assert found.get(PLUGIN_TABLES) == [ROOT / "docs" / "plugins.md"], found
    assert found.get(CONFIG_REFERENCE) == [ROOT / "docs" / "config.md"], found


def test_arena_list_markdown_prints_the_committed_tables() -> None:
    result = CliRunner().invoke(app, ["list", "--markdown", "--builtin-only"])
    assert result.exit_code == 0, result.output
    assert result.output == plugin_tables(builtin_only=True)
    assert "| `knockoff` |" in result.output and "| `reverse_sigmoid` |" in result.output


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = _slug(match[1])
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_reach_the_repository(page: Path) -> None:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        outside = not resolved.is_relative_to(ROOT) or not resolved.exists()
        if outside or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_no_reference_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [p for p in OUTSIDE if p in text]
    assert not found, f"{page.relative_to(ROOT)} refers outside the repository: {found}"


def test_readme_keeps_the_two_commands_short() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/tournament.sh" in readme and "bash scripts/test.sh" in readme
    assert (ROOT / "scripts" / "tournament.sh").is_file() and (
        ROOT / "scripts" / "test.sh"
    ).is_file()
    assert len(readme.splitlines()) <= 150, "README.md is the front page: move detail to docs/"


def test_the_docs_index_links_every_page() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for target in LINK.findall(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert not pages - linked, f"docs/index.md does not link {sorted(pages - linked)}"
