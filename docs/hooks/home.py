"""The site's home page is the README, generated at build time so the two never differ: its links into `docs/`
become links within the site."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files


def home_page(readme: str) -> str:
    """README.md's Markdown with `](docs/…)` links made relative to the site's root."""
    return readme.replace("](docs/", "](")


def on_files(files: Files, config) -> Files:
    readme = Path(config["config_file_path"]).with_name("README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=home_page(readme)))
    return files
