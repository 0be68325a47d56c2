"""What every generated reference page shares: the repository root, table cells, headings' anchors."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

from cifarflow.markdown import escape, table

ROOT = Path(__file__).resolve().parents[2]


def cell(text: Any) -> str:
    """`text` on one line, as Markdown that shows it: `code spans` kept, everything else escaped (`<class>` too)."""
    parts = " ".join(str(text).split()).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code span
        return escape(" ".join(str(text).split()))
    return "`".join(part if inside else escape(part) for inside, part in zip([False, True] * len(parts), parts))


def code(text: Any) -> str:
    return f"`{text}`"


def rows(header: Sequence[str], *lines: Sequence[Any]) -> str:
    """A Markdown table, then a blank line; cells are Markdown already (`cell` or `code` them first)."""
    return "\n".join(table(header, *lines)) + "\n"


def anchor(heading: str) -> str:
    """The anchor mkdocs gives a heading (the toc extension's default slug)."""
    return slugify(heading, "-")


def docstring(path: Path) -> str:
    """A Python file's module docstring, read without importing it ("" when it has none)."""
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def first_sentence(text: str) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(text.strip().split("\n\n")[0].split())
