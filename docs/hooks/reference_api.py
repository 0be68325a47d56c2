"""The service's HTTP API from its OpenAPI schema and routes (http-api.md, openapi.json), and the Python API pages of
`cifarflow`, one per subpackage, rendered by mkdocstrings from the docstrings (api/)."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from reference_markdown import ROOT, anchor, cell, code, docstring, first_sentence, rows

SCHEMA_FILE = "reference/openapi.json"
PACKAGE = "cifarflow"


@cache
def service() -> Any:
    """The service's app as `serving/app.py` builds it (on a data dir that does not exist: building reads nothing)."""
    from serving.app import create_app

    return create_app(Path(tempfile.gettempdir()) / "cifarflow-docs-no-data-dir", reviewers=[])


def openapi() -> dict[str, Any]:
    return service().openapi()


def routes() -> list[tuple[str, str, Any]]:
    """(method, path, route) for every route of the app, those of its routers too; a mount's method is `*`."""
    from fastapi.routing import iter_route_contexts

    found = []
    for context in iter_route_contexts(service().routes):
        route = context.original_route
        methods = sorted(getattr(route, "methods", None) or ["*"])
        found += [(method, route.path, route) for method in methods if method != "HEAD"]  # HEAD: GET's (HeadAsGet)
    return found


def schema_name(schema: dict[str, Any]) -> str:
    """A schema as a reader names it: a link to its component, `array of X`, or its type."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchor(name)})"
    if "anyOf" in schema:
        return " or ".join(schema_name(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {schema_name(schema.get('items', {}))}"
    if "enum" in schema:
        return " or ".join(code(json.dumps(value)) for value in schema["enum"])
    kind = schema.get("type", "any")
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def bodies(content: dict[str, Any]) -> str:
    return "; ".join(f"{code(kind)}: {schema_name(body.get('schema', {}))}" for kind, body in content.items()) or "—"


def operation_section(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    out = [
        f"### {method.upper()} {path}\n",
        f"**{cell(operation.get('summary', ''))}**. {cell(operation.get('description', ''))}\n",
    ]
    parameters = operation.get("parameters", [])
    if parameters:
        out.append(
            rows(
                ["parameter", "in", "required", "type", "description"],
                *[
                    [code(p["name"]), p["in"], "yes" if p.get("required") else "no", schema_name(p.get("schema", {}))]
                    + [cell(p.get("description") or p.get("schema", {}).get("description", ""))]
                    for p in parameters
                ],
            )
        )
    if "requestBody" in operation:
        out.append(f"Request body: {bodies(operation['requestBody'].get('content', {}))}.\n")
    out.append(
        rows(
            ["status", "meaning", "body"],
            *[
                [code(status), cell(answer.get("description", "")), bodies(answer.get("content", {}))]
                for status, answer in operation.get("responses", {}).items()
            ],
        )
    )
    return out


def schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name}\n"]
    if schema.get("description"):
        out.append(f"{cell(schema['description'])}\n")
    required = set(schema.get("required", []))
    fields = schema.get("properties", {})
    if fields:
        out.append(
            rows(
                ["field", "type", "required", "description"],
                *[
                    [
                        code(field),
                        schema_name(spec),
                        "yes" if field in required else "no",
                        cell(spec.get("description", "")),
                    ]
                    for field, spec in fields.items()
                ],
            )
        )
    return out


def http_api_page() -> str:
    schema = openapi()
    operations = [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    documented = {(method.upper(), path) for method, path, _ in operations}
    unlisted = [(method, path, route) for method, path, route in routes() if (method, path) not in documented]
    out = [
        "# HTTP API\n",
        f"The prediction service, `serving/app.py` ([its options](commands.md#{anchor('serving/app.py')})): "
        f"**{cell(schema['info']['title'])}**, version {schema['info']['version']}. Generated from the OpenAPI "
        "schema the service itself serves at `/openapi.json`; the same schema as a file: "
        "[openapi.json](openapi.json). `HEAD` is answered on every `GET` path. The service's own `/docs` and "
        "`/redoc` pages (FastAPI's) fetch Swagger UI and ReDoc from a CDN, so they stay blank on a machine without "
        "internet; this page and `/openapi.json` need none.\n",
        f"{cell(schema['info'].get('description', ''))}\n",
        "## Operations\n",
        rows(
            ["method", "path", "summary"],
            *[
                [
                    code(method.upper()),
                    f"[`{path}`](#{anchor(f'{method.upper()} {path}')})",
                    cell(op.get("summary", "")),
                ]
                for method, path, op in operations
            ],
        ),
        "## Routes outside the schema\n",
        "The page, the review page, their static files and FastAPI's own schema views.\n",
        rows(
            ["method", "path", "what"],
            *[[code(method), code(path), cell(route_about(route))] for method, path, route in unlisted],
        ),
        "## Operation details\n",
    ]
    for method, path, operation in operations:
        out += operation_section(method, path, operation)
    out.append("## Schemas\n")
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        out += schema_section(name, component)
    return "\n".join(out)


def route_about(route: Any) -> str:
    """What a route outside the schema serves: its endpoint's docstring, or the folder a mount serves."""
    if getattr(route, "app", None) is not None and hasattr(route.app, "directory"):
        return f"static files: `{Path(route.app.directory).relative_to(ROOT)}/`"
    endpoint = getattr(route, "endpoint", None)
    return first_sentence((endpoint.__doc__ or "") if endpoint else "") or f"FastAPI's own view `{route.name}`"


def schema_file() -> str:
    return json.dumps(openapi(), indent=2) + "\n"


def api_pages() -> dict[str, list[str]]:
    """Page name → the public modules it documents: `cifarflow` (the top-level modules) and one per subpackage
    (`cifarflow.data`), found on disk; a module or folder whose name starts with `_` is private."""
    pages: dict[str, list[str]] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
            if not path.read_text().strip():
                continue  # an empty package file: nothing to show
        if any(part.startswith("_") for part in parts):
            continue
        page = ".".join(parts[:2]) if path.parent != ROOT / PACKAGE else PACKAGE
        pages.setdefault(page, []).append(".".join(parts))
    return {page: pages[page] for page in sorted(pages, key=lambda page: (page != PACKAGE, page))}


def package_about(page: str) -> str:
    init = ROOT.joinpath(*page.split("."), "__init__.py")
    return first_sentence(docstring(init)) if init.exists() else ""


def api_page(page: str, modules: list[str]) -> str:
    about = package_about(page)
    out = [f"# {page}\n", f"{cell(about)}\n" if about else ""]
    for module in modules:
        if module == page:
            continue  # the package's docstring is the line above
        out.append(f"::: {module}\n")
    return "\n".join(part for part in out if part)


def api_index_page() -> str:
    pages = api_pages()
    return "\n".join(
        [
            "# Python API\n",
            "The public modules of the `cifarflow` package, from their docstrings (rendered by mkdocstrings at build "
            "time; a module or name starting with `_` is private and left out). One page per subpackage:\n",
            rows(
                ["page", "what it holds", "modules"],
                *[
                    [
                        f"[{page}]({page}.md)",
                        cell(package_about(page)),
                        ", ".join(code(m.rsplit(".", 1)[-1]) for m in modules),
                    ]
                    for page, modules in pages.items()
                ],
            ),
        ]
    )
