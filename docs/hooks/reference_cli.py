"""The command-line reference pages: every command's `--help` (commands.md), `PipelineConfig`'s fields and their
options (configuration.md), the exit codes (exit-codes.md)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Iterator
from functools import cache
from types import ModuleType

from reference_markdown import ROOT, anchor, cell, code, docstring, first_sentence, rows

COMMAND_FOLDERS = ("flows", "serving")  # a script there with a `__main__` block is a command users run
HELP_COLUMNS = "100"  # argparse wraps help at $COLUMNS
MAKE_TARGET = re.compile(r"^([a-z-]+):.*## (.*)$")  # `make help`'s own rule (the Makefile's help target)


def command_paths() -> list[str]:
    """`flows/x.py`, `serving/y.py`: every script of COMMAND_FOLDERS with a `__main__` block, in name order."""
    return [
        f"{folder}/{path.name}"
        for folder in COMMAND_FOLDERS
        for path in sorted((ROOT / folder).glob("*.py"))
        if '__name__ == "__main__"' in path.read_text()
    ]


@contextlib.contextmanager
def run_as(script: str) -> Iterator[None]:
    """argparse as `python <script>` sees it: its program name from sys.argv[0], its width from $COLUMNS."""
    argv0, columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0], os.environ["COLUMNS"] = script, HELP_COLUMNS
    try:
        yield
    finally:
        sys.argv[0] = argv0
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


@cache
def parsers() -> dict[str, argparse.ArgumentParser | None]:
    """Each command → its parser (`build_parser()`, imported in-process), or None for a script without one."""
    found = {}
    for script in command_paths():
        module: ModuleType = importlib.import_module(script.removesuffix(".py").replace("/", "."))
        with run_as(script):
            found[script] = module.build_parser() if hasattr(module, "build_parser") else None
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands (`registry_flow.py list`), name → parser."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {name: sub for group in groups for name, sub in group.choices.items()}


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """`flows/x.py` and `flows/x.py sub` → its parser: every command line a user can type."""
    found = {}
    for script, parser in parsers().items():
        if parser is not None:
            found[script] = parser
            found |= {f"{script} {name}": sub for name, sub in subcommands(parser).items()}
    return found


def make_targets() -> dict[str, str]:
    """The Makefile's targets with a `## ` comment, as `make help` lists them: target → what it does."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    return {found[1]: found[2] for line in lines if (found := MAKE_TARGET.match(line))}


def commands_page() -> str:
    scripts = parsers()
    out = [
        "# Commands\n",
        "Every command, with its `--help` as the code prints it (this page is generated from the parsers at build "
        "time). Each command's last line on stdout is `done: …` or `error: …`, and its exit code says the same: see "
        "[Exit codes](exit-codes.md). Run them from the repository root with the project's Python "
        "(`.venv/bin/python flows/cifar_flow.py …`); the `make` targets wrap the common ones.\n",
        rows(
            ["command", "what it is"],
            [f"[`make`](#{anchor('make')})", "the Makefile's targets (`make help` lists them)"],
            *[
                [f"[`{script}`](#{anchor(script)})", cell(first_sentence(docstring(ROOT / script)))]
                for script in scripts
            ],
        ),
        "## make\n",
        rows(["target", "what it does"], *[[code(f"make {t}"), cell(what)] for t, what in make_targets().items()]),
    ]
    for script, parser in scripts.items():
        out.append(f"## {script}\n")
        if parser is None:
            out.append(f"{cell(docstring(ROOT / script))}\n")
            continue
        with run_as(script):
            out.append(f"```text\n{parser.format_help().rstrip()}\n```\n")
            for name, sub in subcommands(parser).items():
                out.append(f"### {script} {name}\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(out)


def options_of(field: str) -> dict[str, str]:
    """command → its option that sets `field` (argparse dest `field`), among the commands that build a
    `PipelineConfig` (their source names it)."""
    return {
        command: action.option_strings[-1]
        for command, parser in every_parser().items()
        if "PipelineConfig" in (ROOT / command.split(" ")[0]).read_text()
        for action in parser._actions
        if action.dest == field and action.option_strings
    }


def type_name(annotation: object) -> str:
    """`int | None`, `Literal['none', 'champion']`, `Path`: an annotation as a reader writes it."""
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if typing.get_origin(annotation) is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    return re.sub(r"\b(typing|pathlib)\.", "", str(annotation))


def constraints(metadata: list[object]) -> str:
    """pydantic's bounds (`ge=8`, `lt=1`) as `≥ 8`, `< 1`."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = [(sign, getattr(item, name)) for item in metadata for name, sign in signs.items() if hasattr(item, name)]
    return ", ".join(f"{sign} {value_text(value)}" for sign, value in bounds)


def value_text(value: object) -> str:
    """`2**31` as 2,147,483,648, `1/6` as 0.166667, a path as its text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def configuration_page() -> str:
    from cifarflow.config import PipelineConfig

    lines = []
    for name, field in PipelineConfig.model_fields.items():
        none_allowed = type(None) in typing.get_args(field.annotation)
        default = code(value_text(field.default)) if field.default is not None or none_allowed else "from the data dir"
        by_option: dict[str, list[str]] = {}
        for command, option in options_of(name).items():
            by_option.setdefault(option, []).append(f"[{command.split('/')[-1]}](commands.md#{anchor(command)})")
        options = "; ".join(f"{code(option)} ({', '.join(commands)})" for option, commands in by_option.items())
        kind = " ".join(filter(None, [code(type_name(field.annotation)), constraints(field.metadata)]))
        lines.append([code(name), kind, default, options or "—", cell(field.description)])
    return "\n".join(
        [
            "# Configuration\n",
            f"`PipelineConfig` (`cifarflow/config.py`): {cell(PipelineConfig.__doc__)} One typed object flows from "
            "the command line (or a deployment's parameters, `config:` in `deployments/prefect.yaml`) to every stage; "
            "a value it refuses is refused before any work, naming the option (exit code 2). Generated from its "
            "pydantic fields; the option column lists each command option that sets the field.\n",
            rows(["field", "type", "default", "option", "description"], *lines),
            "Which fields enter which stage's key: [Stages](stages.md).\n",
        ]
    )


def exit_codes_page() -> str:
    from cifarflow import cli

    names = {value: name for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)}
    return "\n".join(
        [
            "# Exit codes\n",
            "Every command (see [Commands](commands.md)) ends with one line on stdout that says how it went: "
            "`done: <what it did>`, or `error: <what was wrong and what to do>`, and one exit code. Generated from "
            "`EXIT_CODES` in `cifarflow/cli.py`.\n",
            rows(
                ["exit", "constant", "meaning"],
                *[[code(value), code(names[value]), cell(meaning)] for value, meaning in cli.EXIT_CODES.items()],
            ),
            "Each command's `main` is one call, `run_cli(parser, check, run, argv, what=…)`: `check(args)` builds what "
            "the run needs and does no work, `run(args, checked)` does the work. So the line between 1 and 2 is "
            "*when* a problem is found, not what it is: what `check` refuses (a value the typed config refuses, "
            "naming the option: `error: invalid options: --epochs: Input should be greater than 0`) is 2; anything "
            "found once the run started is 1. An unexpected error's traceback goes to stderr, and the last line is "
            "still `error: <what> failed: <Type>: <message>`.\n",
        ]
    )
