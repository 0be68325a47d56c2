"""What a Markdown text shows once rendered (CommonMark with GFM tables, as the Prefect UI renders
artifacts): the visible text of its table cells, the formatting tags it made, its hard-wrapped lines."""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

RENDERER = MarkdownIt("commonmark").enable("table")
PARAGRAPH_START = re.compile(r"\s*([|#>!<]|[-*+] |\d+[.)] |```|---)")  # not a paragraph's text line


def visible(fragment: str) -> str:
    """HTML → the text a reader sees."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def table_cells(markdown: str) -> list[list[str]]:
    """Every rendered table row (header rows included) as its cells' visible text."""
    rendered = RENDERER.render(markdown)
    return [
        [visible(cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", rendered, re.S)
    ]


def inline_tags(markdown: str) -> set[str]:
    """The inline formatting tags rendering made (em, code, a, s, …): where data became formatting."""
    return set(re.findall(r"<(em|code|a|s|del|img|script|b|i)\b", RENDERER.render(markdown)))


def wrapped_lines(markdown: str) -> list[str]:
    """Lines that continue a paragraph begun on the line before: a hard wrap, which the Prefect UI shows
    as a ragged short line. Tables, lists, headings, images, quotes and code blocks are not paragraphs."""
    found, previous, fenced = [], "", False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        text = bool(line.strip()) and not fenced and not PARAGRAPH_START.match(line)
        if text and previous:
            found.append(line)
        previous = line if text else ""
    return found
