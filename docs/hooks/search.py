"""Search ranks a task's guide above the generated Python API pages that mention the same words: a boost per part of
the site, as Material's search reads it from a page's `search: boost` metadata."""

from __future__ import annotations

BOOSTS = {"tutorial.md": 2.0, "how-to/": 2.0, "explanation/": 1.5, "reference/api/": 0.3}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for prefix, boost in BOOSTS.items():
        if page.file.src_uri.startswith(prefix):
            page.meta.setdefault("search", {}).setdefault("boost", boost)
    return markdown
