"""mkdocs hook: the reference pages, generated from the code at build time (docs/reference/index.md says what each
holds); tests/test_docs_reference.py holds every page against the code, both ways."""

from __future__ import annotations

import sys

# the page modules lie beside this file: mkdocs puts its folder on sys.path while it loads a hook
import reference_api
import reference_cli
import reference_pipeline
from mkdocs.structure.files import File

API_INDEX = "reference/api/index.md"
PRODUCT = ("cifarflow", "flows", "serving", "tasks")  # what the pages are generated from: imported afresh per build


def pages() -> dict:
    """Each generated file's path under docs/ → the function that renders it."""
    return {
        "reference/commands.md": reference_cli.commands_page,
        "reference/configuration.md": reference_cli.configuration_page,
        "reference/exit-codes.md": reference_cli.exit_codes_page,
        "reference/stages.md": reference_pipeline.stages_page,
        "reference/metrics.md": reference_pipeline.metrics_page,
        "reference/data-dir.md": reference_pipeline.data_dir_page,
        "reference/events.md": reference_pipeline.events_page,
        "reference/http-api.md": reference_api.http_api_page,
        reference_api.SCHEMA_FILE: reference_api.schema_file,
        API_INDEX: reference_api.api_index_page,
    }


def on_pre_build(config) -> None:
    """`make docs-serve` rebuilds in one process when the code changes (mkdocs.yml's `watch`): forget the product's
    modules (the page modules import them inside their functions) and their caches, so a build shows today's code."""
    for name in [name for name in sys.modules if name.split(".")[0] in PRODUCT and name != "cifarflow.environment"]:
        del sys.modules[name]
    reference_cli.parsers.cache_clear()
    reference_api.service.cache_clear()


def api_page_paths() -> dict[str, str]:
    """Each Python API page's nav title → its path."""
    return {page: f"reference/api/{page}.md" for page in reference_api.api_pages()}


def generated() -> dict[str, str]:
    """Every generated file: its path under docs/ → its content."""
    files = {path: render() for path, render in pages().items()}
    modules = reference_api.api_pages()
    return files | {path: reference_api.api_page(page, modules[page]) for page, path in api_page_paths().items()}


def on_config(config):
    """The Python API pages in the nav: a section under Reference, its index first."""
    for item in config["nav"]:
        if isinstance(item, dict) and API_INDEX in item.get("Reference", []):
            section = item["Reference"]
            pages = [{title: path} for title, path in api_page_paths().items()]
            section[section.index(API_INDEX)] = {"Python API": [API_INDEX, *pages]}
    return config


def on_files(files, config):
    for path, content in generated().items():
        files.append(File.generated(config, path, content=content))
    return files
