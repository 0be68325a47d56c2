"""The reference pages hold every command, option, configuration field, stage, endpoint, exit code, event, payload
key, data-dir path and public module the code has, and nothing else: each page is rendered by the generator the
docs build runs (docs/hooks/reference.py), read back, and compared with the code found here by other means."""

from __future__ import annotations

from cifarflow.environment import OFFLINE_DEFAULTS

import argparse
import ast
import importlib
import json
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import yaml

import cifarflow
from cifarflow import cli
from cifarflow.config import PipelineConfig
from cifarflow.layout import DataLayout
from cifarflow.orchestration.events import DATASET_UPDATED, EVENTS, _emit
from cifarflow.orchestration.stages import SPECS, STAGES
from cifarflow.reporting.report import METRICS_FIELDS, MODEL_CARD_FIELDS, check_fields
from tests.serving_helpers import app_routes

pytestmark = pytest.mark.flow  # imports every command and builds the service's app: seconds, not the unit tier's ms

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("cifarflow", "flows", "serving", "tasks")
HEADING = re.compile(r"^(#{2,3}) (.+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def hook():
    """The mkdocs hook, imported as mkdocs imports it (its folder on sys.path)."""
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        yield importlib.import_module("reference")
    finally:
        sys.path.remove(str(REPO / "docs" / "hooks"))


@pytest.fixture(scope="module")
def pages(hook) -> dict[str, str]:
    """Every generated file, path under docs/ → content, rendered once."""
    return hook.generated()


def sections(page: str) -> dict[str, str]:
    """`## heading` and `### heading` → the text up to the next heading."""
    found = list(HEADING.finditer(page))
    return {
        m[2]: page[m.end() : found[i + 1].start() if i + 1 < len(found) else len(page)] for i, m in enumerate(found)
    }


def table_column(text: str, column: int = 0) -> list[str]:
    """The cells in `column` of the first Markdown table in `text`, body rows only, code spans' backticks removed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("| ")), len(lines))
    return [cells(row)[column].strip("`") for row in lines[start + 2 : end]]


def cells(row: str) -> list[str]:
    """A table row's cells, split as Python-Markdown splits them: not at a `|` inside a code span or escaped."""
    found, current, in_code, previous = [], "", False, ""
    for char in row.strip()[1:-1]:
        if char == "|" and not in_code and previous != "\\":
            found, current = [*found, current.strip()], ""
        else:
            in_code ^= char == "`"
            current += char
        previous = char
    return [*found, current.strip()]


def has_main_block(path: Path) -> bool:
    """Whether a script has `if __name__ == "__main__":` at its top level (read as Python, not as text)."""
    for node in ast.parse(path.read_text()).body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and getattr(test.left, "id", None) == "__name__":
            return any(getattr(value, "value", None) == "__main__" for value in test.comparators)
    return False


def test_every_page_of_the_nav_is_generated_or_written_and_starts_with_its_title(pages, hook):
    config = {"nav": yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]}
    nav = json.dumps(hook.on_config(config)["nav"])
    for path, content in pages.items():
        if path.endswith(".md"):
            assert f'"{path}"' in nav, f"{path} is generated but not in the nav"
            assert content.startswith("# "), path
    for written in ("reference/index.md", "reference/environment.md"):
        assert (REPO / "docs" / written).read_text().startswith("# ") and f'"{written}"' in nav
    for reference in re.findall(r'"(reference/[^"]+\.md)"', nav):
        assert reference in pages or (REPO / "docs" / reference).is_file(), f"{reference} is in the nav, not built"


def test_every_script_with_a_main_block_is_a_command_on_the_page_and_every_command_exists(pages):
    scripts = {f"{folder}/{path.name}" for folder in ("flows", "serving") for path in (REPO / folder).glob("*.py")}
    commands = {script for script in scripts if has_main_block(REPO / script)}
    assert {"flows/cifar_flow.py", "serving/app.py"} <= commands
    headings = [m[2] for m in HEADING.finditer(pages["reference/commands.md"]) if m[1] == "##"]
    assert set(headings) - {"make"} == commands


def help_options(help_text: str) -> set[str]:
    """The option strings argparse lists in a `--help`: `-h, --help`, `--data-dir DATA_DIR`, … at a line's start."""
    lines = re.findall(r"^  (-[^ ].*?)(?:  |$)", help_text, re.MULTILINE)
    return {option.split(" ")[0] for line in lines for option in line.split(", ")}


def test_every_option_of_every_command_and_subcommand_is_on_the_page_and_no_other(pages):
    page = sections(pages["reference/commands.md"])
    commands = [heading for heading in page if heading.endswith(".py") or ".py " in heading]
    seen = set()
    for script in {heading.split(" ")[0] for heading in commands}:
        module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
        if not hasattr(module, "build_parser"):
            seen.add(script)
            assert "```" not in page[script], f"{script} has no parser, yet help on the page"
            continue
        parser = module.build_parser()
        parsers = {script: parser}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers |= {f"{script} {name}": sub for name, sub in action.choices.items()}
        for heading, each in parsers.items():
            assert heading in page, f"{heading} is missing from the commands page"
            declared = {option for action in each._actions for option in action.option_strings}
            assert help_options(page[heading]) == declared, heading
            seen.add(heading)
    assert seen == set(commands)  # no heading for a command or subcommand that is gone


def test_every_make_target_with_a_description_is_on_the_page(pages):
    targets = re.findall(r"^([a-z-]+):.*## ", (REPO / "Makefile").read_text(), re.MULTILINE)
    listed = table_column(sections(pages["reference/commands.md"])["make"])
    assert listed == [f"make {target}" for target in targets] and "make run" in listed


def test_every_configuration_field_is_on_the_page_and_no_other(pages):
    fields = table_column(pages["reference/configuration.md"])
    assert fields == list(PipelineConfig.model_fields)
    options = dict(zip(fields, table_column(pages["reference/configuration.md"], 3)))
    assert options["epochs"].startswith("--epochs") and "(commands.md#flowscifar_flowpy)" in options["epochs"]
    assert "—" not in options.values()  # every field can be set from the command line


def test_every_stage_is_on_the_page_in_order_with_its_inputs_and_output(pages):
    page = pages["reference/stages.md"]
    assert [m[2] for m in HEADING.finditer(page) if m[1] == "##"] == list(STAGES)
    assert " → ".join(f"[{stage}](#{stage})" for stage in STAGES) in page
    assert table_column(page) == [f"[{stage}](#{stage})" for stage in STAGES]
    for stage, text in sections(page).items():
        facts = dict(zip(table_column(text), table_column(text, 1)))
        assert re.findall(r"\[(\w+)\]", facts["upstream stages"]) == list(SPECS[stage].upstream)
        assert facts["writes"] == SPECS[stage].writes != ""


def test_every_route_of_the_service_is_on_the_page_and_no_other(pages, tmp_path):
    from serving.app import create_app

    app = create_app(tmp_path / "data", reviewers=[])
    schema = app.openapi()
    operations = {(method.upper(), path) for path, ops in schema["paths"].items() for method, ops in ops.items()}
    routes = {
        (method, route.path)
        for route in app_routes(app)
        for method in (getattr(route, "methods", None) or {"*"})
        if method != "HEAD"  # answered on every GET path by the service's HeadAsGet layer
    }
    assert operations < routes and ("GET", "/") in routes - operations and ("*", "/static") in routes
    page = pages["reference/http-api.md"]
    documented = {tuple(heading.split(" ", 1)) for heading in sections(page) if re.match(r"[A-Z]+ /", heading)}
    assert documented == operations
    outside = sections(page)["Routes outside the schema"]
    assert set(zip(table_column(outside), table_column(outside, 1))) == routes - operations
    assert json.loads(pages["reference/openapi.json"]) == schema
    assert "](openapi.json)" in page


def test_every_exit_code_is_on_the_page_and_no_other(pages):
    tree = ast.parse((REPO / "cifarflow" / "cli.py").read_text())
    names = [
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in ast.walk(node) if isinstance(t, ast.Name)
    ]
    constants = {
        getattr(cli, name): name for name in names if re.fullmatch(r"EXIT_[A-Z]+", name) and name != "EXIT_CODES"
    }
    assert set(constants) == set(cli.EXIT_CODES) and {0, 1, 2} <= set(constants)  # each one means something
    page = pages["reference/exit-codes.md"]
    assert dict(zip(map(int, table_column(page)), table_column(page, 1))) == constants
    assert "`done: " in page and "`error: " in page


def test_every_event_and_payload_key_is_on_the_page_and_no_other(pages):
    emitted = set()
    for folder in PRODUCT:
        for path in (REPO / folder).rglob("*.py"):
            emitted |= set(re.findall(r"\bcifar10\.[a-z]+\.[a-z]+\b", path.read_text()))
    assert emitted == set(EVENTS)
    page = sections(pages["reference/events.md"])
    assert {heading for heading in page if heading.startswith("cifar10.")} == set(EVENTS)
    for event, declared in EVENTS.items():
        assert table_column(page[event]) == list(declared.payload)
        assert f"`{event.rsplit('.', 1)[0]}.<data dir>`" in page[event]
    deployments = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    triggers = {(d["name"], event) for d in deployments for t in d.get("triggers", []) for event in t["expect"]}
    listed = sections(pages["reference/events.md"])["Triggers"]
    assert {(name.rsplit("/", 1)[1], event) for name, event in zip(table_column(listed), table_column(listed, 3))} == (
        triggers
    )
    assert all(name.count("/") == 1 for name in table_column(listed))  # a deployment's full name: flow/deployment
    assert {event for _, event in triggers} <= set(EVENTS)


def test_an_undeclared_payload_key_is_warned_and_the_event_still_sent(monkeypatch):
    """A programming error a test run turns into a failure (warnings are errors under pytest), while a user's run that
    has already moved its champion or added its batch still announces it (the emitter records what it is handed:
    Prefect's own, with no server, spends seconds finding none)."""
    from cifarflow.orchestration import events

    sent = []
    monkeypatch.setattr(events, "emit_event", lambda **event: sent.append(event))
    with pytest.warns(UserWarning, match=r"\['bogus'\] are not declared"):
        _emit(DATASET_UPDATED, "/data", {"dataset_version": "v", "bogus": 1})
    assert [event["payload"] for event in sent] == [{"data_dir": "/data", "dataset_version": "v", "bogus": 1}]


def test_every_data_dir_path_is_on_the_page_where_the_layout_puts_it(pages):
    layout = DataLayout(Path("/data"))
    listed = pages["reference/data-dir.md"]
    rows = dict(zip(table_column(listed, 1), table_column(listed)))
    attributes = [name for name in vars(DataLayout) if not name.startswith("_") and name != "root"]
    assert set(rows) == set(attributes) and "model_dir" in rows
    for name, path in rows.items():
        value = getattr(layout, name)
        placeholder = re.search(r"<[^>]+>", path)
        if placeholder:  # a folder per key
            assert value("KEY") == Path("/data", path.replace(placeholder[0], "KEY").rstrip("/")), name
        else:
            assert value == Path("/data", path.rstrip("/")), name
    assert all(about.strip() for about in table_column(listed, 2))


def test_metrics_and_model_card_fields_are_on_the_page_and_a_record_with_others_is_refused(pages):
    page = sections(pages["reference/metrics.md"])
    assert table_column(page["metrics.json"]) == list(METRICS_FIELDS)
    assert table_column(page["model_card.json"]) == list(MODEL_CARD_FIELDS)
    with pytest.raises(RuntimeError, match=r"\['extra', 'model'\] differ"):
        check_fields({"test_accuracy": 1, "extra": 2}, {"test_accuracy": "", "model": ""}, "metrics.json")
    check_fields({"a": 1}, {"a": "", "later": ""}, "x.json", added_later=("later",))


def test_every_environment_variable_the_product_reads_is_on_the_hand_written_page_and_no_other():
    page = (REPO / "docs" / "reference" / "environment.md").read_text()
    read = set()
    for folder in PRODUCT:
        for path in (REPO / folder).rglob("*.py"):
            read |= set(re.findall(r"\bCIFAR(?:FLOW)?_[A-Z_]+\b", path.read_text()))
    assert {"CIFARFLOW_DATA_DIR", "CIFARFLOW_REVIEW_TOKEN"} <= read
    assert set(re.findall(r"\bCIFAR(?:FLOW)?_[A-Z_]+\b", page)) == read
    offline = sections(page)["Offline defaults"]
    assert dict(zip(table_column(offline), table_column(offline, 1))) == OFFLINE_DEFAULTS
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        assert f"`{name}`" in page and any(name in p.read_text() for p in (REPO / "cifarflow").rglob("*.py"))


def test_every_public_module_of_the_package_has_its_api_page(pages):
    public = {
        module.name
        for module in pkgutil.walk_packages(cifarflow.__path__, "cifarflow.")
        if not any(part.startswith("_") for part in module.name.split("."))
    }
    assert "cifarflow.config" in public and "cifarflow.intake.images" in public
    rendered = {
        line.removeprefix("::: ")
        for path, content in pages.items()
        if path.startswith("reference/api/")
        for line in content.splitlines()
        if line.startswith("::: ")
    }
    packages_shown_as_titles = {name for name in public if name.count(".") == 1 and name not in rendered}
    assert rendered | packages_shown_as_titles == public
    for package in packages_shown_as_titles:  # a package's page carries its name
        assert pages[f"reference/api/{package}.md"].startswith(f"# {package}\n")


DOCUMENTED = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)


def documented_code() -> list[tuple[str, str]]:
    """(page, line) for every line of code the README and the docs show: fenced blocks and inline code spans."""
    return [
        (page.name, line)
        for page in DOCUMENTED
        for match in CODE.finditer(page.read_text(encoding="utf-8"))
        for line in (match[1] or match[2]).splitlines()
    ]


def test_every_make_target_and_command_option_the_docs_show_exists(hook):
    """A renamed make target or option breaks the build, not the reader: every `make <target>` and every `--option`
    given to a command (`flows/x.py`, `serving/app.py`, their subcommands) in the README's and the pages' code is one
    the Makefile or that command's parser has."""
    makefile = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (\S+)$", makefile, re.MULTILINE))
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    targets |= {variables[name] for name in re.findall(r"^\$\((\w+)\):", makefile, re.MULTILINE)}  # file targets
    commands = hook.reference_cli.every_parser()
    unknown, checked = [], 0
    for page, line in documented_code():
        for target in re.findall(r"(?<![\w/.-])make ([a-z][\w./-]*)", line):
            checked += 1
            if target not in targets:
                unknown.append(f"{page}: make {target}")
        for script, rest in re.findall(r"((?:flows|serving)/\w+\.py)((?:[ \t]+[^\s|;&#>]+)*)", line):
            words = rest.split()
            name = f"{script} {words[0]}" if words and f"{script} {words[0]}" in commands else script
            if name not in commands:
                continue
            known = {option for action in commands[name]._actions for option in action.option_strings}
            for option in (word.split("=")[0] for word in words if word.startswith("--")):
                checked += 1
                if option not in known:
                    unknown.append(f"{page}: {name} {option}")
    assert checked > 100, checked  # the docs show commands: the parse found them
    assert not unknown, unknown


def test_every_operation_of_the_service_says_what_it_does_from_its_docstring_with_the_service_limits(pages, tmp_path):
    """A route without a docstring renders as its title alone; numbers copied into one must be the service's."""
    import inspect

    from cifarflow.intake.images import MIN_SIDE
    from serving.app import create_app
    from serving.review_routes import MAX_QUEUE

    app = create_app(tmp_path / "data", reviewers=[])
    endpoints = {
        (method, route.path): route.endpoint for route in app_routes(app) for method in getattr(route, "methods", ())
    }
    limits = app.state.limits
    numbers = {  # a number as the docstrings write it → the value the service holds
        r"(\d+) MiB": f"{limits.max_upload_bytes / 2**20:g}",
        r"(\d+) (?:images|files)\b": str(limits.max_batch_files),
        r"(\d+) megapixels": f"{limits.max_pixels / 1e6:g}",
        r"(\d+) pixels a side": str(MIN_SIDE),
        r"\b1–(\d+)": str(MAX_QUEUE),
    }
    found = {pattern: set() for pattern in numbers}
    page = sections(pages["reference/http-api.md"])
    operations = [(m.upper(), path, op) for path, ops in app.openapi()["paths"].items() for m, op in ops.items()]
    assert len(operations) > 10
    for method, path, operation in operations:
        about = operation.get("description", "")
        assert about.strip(), f"{method} {path}: its route function has no docstring"
        assert about == inspect.cleandoc(endpoints[method, path].__doc__)
        first_line = page[f"{method} {path}"].strip().splitlines()[0]
        assert first_line != f"**{operation['summary']}**.", f"{method} {path} shows its title alone"
        for pattern in numbers:
            found[pattern] |= set(re.findall(pattern, " ".join(about.split())))
    assert found == {pattern: {value} for pattern, value in numbers.items()}
