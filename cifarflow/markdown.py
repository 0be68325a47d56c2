"""Text from data (file names, reasons, class names, paths, messages) made safe for Markdown: every
report.md and every Prefect artifact, whose UI renders Markdown (table cells and descriptions too)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_ESCAPES = str.maketrans(
    {
        **{char: "\\" + char for char in "\\`*_[]|~#"},  # emphasis, code, links, table cells, strikethrough
        "&": "&amp;",  # entities, not backslashes: an HTML tag such as `<class name>` would be dropped
        "<": "&lt;",
        ">": "&gt;",
        "\n": " ",  # a table row or a list item is one line
        "\r": " ",
    }
)


def escape(text: Any) -> str:
    """`str(text)` as inline Markdown that renders as exactly that text, outside code spans."""
    return str(text).translate(_ESCAPES)


def table(header: Sequence[Any], *rows: Sequence[Any]) -> list[str]:
    """A Markdown table's lines: `header`, its rule, then `rows`; cells are Markdown already (escape data first)."""
    return [f"| {' | '.join(map(str, row))} |" for row in (header, ["---"] * len(header), *rows)]


_BLOCK_START = re.compile(r"\s*([|#>!<]|[-*+] |\d+[.)] |```|---|\s{4})")  # not a paragraph's running text
_LIST_ITEM = re.compile(r"\s*([-*+]|\d+[.)]) ")


def join_wrapped(markdown: str) -> str:
    """`markdown` with every paragraph and list item on one line (the Prefect UI shows a wrapped line ragged);
    tables, headings, images, quotes and code keep their lines."""
    lines: list[str] = []
    joinable, fenced = False, False  # whether the last line kept is running text a next line continues
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        text = bool(line.strip()) and not fenced and not _BLOCK_START.match(line)
        if text and joinable:
            lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            continue
        lines.append(line)
        joinable = bool(line.strip()) and not fenced and (text or bool(_LIST_ITEM.match(line)))
    return "\n".join(lines)
