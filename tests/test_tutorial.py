"""The tutorial (docs/tutorial.md) runs as written: a doctest-like runner over the page's ```console blocks.

Each line of a console block that starts with `$ ` is a command; the lines after it, up to the next command, are
what the page shows it prints (a line `…` marks a cut). Other fences (`sh`, `text`) are shown, not run.

How the commands run: verbatim, each with `bash -c` in the root of a temporary copy of the repository (the files
`git ls-files -co --exclude-standard` lists, copied with their mtimes, and `.venv` linked, so `make` finds its
install target up to date and installs nothing), one after another, with the session's Prefect server. The data is
tiny and synthetic (a 400-image archive in the official layout), put where the default source looks first
(`data/cache/cifar-10-python.tar.gz`), so the page's `make run` runs with no variable or option added. A command
whose shown output ends with `(Press CTRL+C to quit)` is a service: it is started in the background (its own process
group), waited for until that line appears in its output, and stopped with SIGTERM at the end. The service's port
is the page's 8000 when that port is free; when it is taken, another port is given to `make serve` through the
environment (`ARGS=--port N`, only where the page's command sets no ARGS) and `127.0.0.1:8000` in the other
commands is replaced by it. Nothing else in a command is changed, so a renamed target or option fails the test.

What is checked for each command: exit status 0, and that its outcome line agrees with the page's. The outcome line
is the last line on stdout (for a service: any line of its output); on the page it is the last shown line that
starts with `done:` or `error:`, else the last shown line (Prefect's log goes to stderr, so the page may show lines
after `done:`). Two lines agree when:
- the page's line is JSON: the actual line is JSON of the same shape (the same keys, recursively; lists by their
  first item; numbers, strings and booleans by kind), so an answer's renamed or missing field fails;
- otherwise: their leading words are equal, the words being the whitespace-separated tokens before the first one
  that holds a digit, a `/` or `…` (numbers, paths and ids differ on synthetic data; the wording must not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.live_server import free_port
from tests.synthetic import write_archive

PAGE = REPO_ROOT / "docs" / "tutorial.md"
PAGE_PORT = 8000
SERVICE_READY = "(Press CTRL+C to quit)"
CUT = "…"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w-]*)")


@dataclass(frozen=True)
class Command:
    line: str  # as the page writes it, without "$ "
    shown: tuple[str, ...]  # what the page shows it prints

    @property
    def is_service(self) -> bool:
        return bool(self.shown) and self.shown[-1].rstrip().endswith(SERVICE_READY)

    @property
    def outcome(self) -> str:
        """The page's outcome line: the last shown `done:`/`error:` line, else the last shown line."""
        lines = [line for line in self.shown if line.strip() and line.strip() != CUT]
        marked = [line for line in lines if line.startswith(("done:", "error:"))]
        return (marked or lines or [""])[-1]


def console_commands(markdown: str) -> list[Command]:
    """The commands of the page's ```console blocks, in order, each with the lines shown after it."""
    commands: list[Command] = []
    fence, language, current, shown = None, "", None, []
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if fence is None:
            if opening:
                fence, language = opening.group(1), opening.group(2)
            continue
        if line.strip() == fence:  # the block ends
            if current is not None:
                commands.append(Command(current, tuple(shown)))
            fence, current, shown = None, None, []
            continue
        if language != "console":
            continue
        if line.startswith("$ "):
            if current is not None:
                commands.append(Command(current, tuple(shown)))
            current, shown = line[2:], []
        elif current is not None:
            shown.append(line)
    return commands


def leading_words(line: str) -> list[str]:
    words = []
    for token in line.split():
        if any(c.isdigit() for c in token) or "/" in token or CUT in token:
            break
        words.append(token)
    return words


def shape(value):
    """JSON without its values: dicts by their keys, lists by their first item, scalars by kind."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None or isinstance(value, bool):
        return "null" if value is None else "boolean"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def as_json(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def agrees(page: str, actual: str) -> bool:
    """Whether a command's actual outcome line agrees with the page's (the rule in the module docstring)."""
    if page.lstrip().startswith(("{", "[")) and as_json(page) is not None:
        return as_json(actual) is not None and shape(as_json(page)) == shape(as_json(actual))
    return leading_words(page) == leading_words(actual)


def checkable(command: Command) -> bool:
    """The page shows an outcome the rule can compare: JSON, or at least one leading word."""
    outcome = command.outcome.strip()
    return (outcome.startswith(("{", "[")) and as_json(outcome) is not None) or bool(leading_words(outcome))


# ---- running them


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def copy_repository(destination: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored) with their mtimes, and `.venv` linked."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file() or source.is_symlink():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)
    (destination / ".venv").symlink_to(REPO_ROOT / ".venv")
    return destination


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Runner:
    repo: Path
    env: dict[str, str]
    port: int = PAGE_PORT

    def localized(self, command: Command) -> str:
        return command.line.replace(f"127.0.0.1:{PAGE_PORT}", f"127.0.0.1:{self.port}")

    def run(self, command: Command, timeout: float = 300) -> None:
        result = subprocess.run(
            ["bash", "-c", self.localized(command)],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        said = f"$ {command.line}\n--- stdout:\n{tail(result.stdout)}\n--- stderr:\n{tail(result.stderr)}"
        assert result.returncode == 0, f"exit status {result.returncode}\n{said}"
        lines = result.stdout.strip().splitlines()
        actual = lines[-1] if lines else ""
        assert agrees(command.outcome, actual), (
            f"the page shows {command.outcome!r}, the command said {actual!r}\n{said}"
        )

    @contextmanager
    def service(self, command: Command, log: Path, timeout: float = 180) -> Iterator[None]:
        env = self.env
        if self.port != PAGE_PORT:
            assert "ARGS=" not in command.line, f"{command.line}: sets ARGS, so the port cannot be given to it"
            env = env | {"ARGS": f"--port {self.port}"}
        with log.open("w") as out:
            process = subprocess.Popen(
                ["bash", "-c", self.localized(command)],
                cwd=self.repo,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while not any(agrees(command.outcome, line) for line in log.read_text(errors="replace").splitlines()):
                said = f"$ {command.line}\n--- output:\n{tail(log.read_text(errors='replace'))}"
                assert process.poll() is None, f"exit status {process.returncode} before {command.outcome!r}\n{said}"
                assert time.monotonic() < deadline, f"no {command.outcome!r} after {timeout:g} s\n{said}"
                time.sleep(0.3)
            yield
        finally:
            with_group(process, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with_group(process, signal.SIGKILL)
                process.wait(10)

    def run_all(self, commands: list[Command], logs: Path) -> None:
        """Run the commands in order; services stay up until every command after them has run."""
        if not commands:
            return
        first, rest = commands[0], commands[1:]
        if first.is_service:
            with self.service(first, logs / f"service-{len(commands)}.log"):
                self.run_all(rest, logs)
        else:
            self.run(first)
            self.run_all(rest, logs)


def with_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # make and the service it started
    except ProcessLookupError:
        pass


@pytest.fixture
def runner(tmp_path, cli_env) -> Runner:
    """A copy of the repository with the synthetic archive as its default source, and the environment to run in."""
    if not (REPO_ROOT / ".venv" / ".installed").is_file():
        pytest.skip("no .venv/.installed: run `make install` first (the commands run with the project's .venv)")
    if shutil.which("make") is None:
        pytest.skip("no `make`: the page's commands are make targets")
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: the repository's files are listed by `git ls-files`")
    repo = copy_repository(tmp_path / "repo")
    up_to_date = subprocess.run(["make", "-q", ".venv/.installed"], cwd=repo, capture_output=True)
    if up_to_date.returncode != 0:
        pytest.skip("pyproject.toml is newer than .venv/.installed: `make` would reinstall; run `make install` first")
    write_archive(repo / "data" / "cache" / "cifar-10-python.tar.gz")
    unset = {"ARGS", "SOURCE", "DATA_DIR", "CIFARFLOW_DATA_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {key: value for key, value in cli_env.items() if key not in unset}
    return Runner(repo, env, PAGE_PORT if port_is_free(PAGE_PORT) else free_port())


@pytest.mark.server  # it starts the service (`make serve`), and at over a minute it is one of the files to start first
def test_the_tutorial_runs_as_written(runner, tmp_path):
    commands = console_commands(PAGE.read_text())
    runner.run_all(commands, tmp_path)
    assert (runner.repo / "data" / "registry").is_dir() and any((runner.repo / "data" / "monitoring").iterdir())


def test_a_renamed_target_or_option_on_the_page_fails_the_runner(runner, tmp_path):
    """The page's own commands with a make target and an option renamed, as a stale page would have them."""
    page = PAGE.read_text()
    stale = page.replace("$ make serve\n", "$ make start\n").replace(
        "make_demo_inbox.py --out", "make_demo_inbox.py --to"
    )
    assert stale.count("\n") == page.count("\n") and stale != page
    changed = [command for command in console_commands(stale) if command not in console_commands(page)]
    assert [command.line.split()[:2] for command in changed] == [
        ["make", "start"],
        [".venv/bin/python", "benchmarks/make_demo_inbox.py"],
    ]
    for command in changed:
        with pytest.raises(AssertionError, match="exit status 2"):
            runner.run_all([command], tmp_path)


def test_the_page_walks_the_journey_and_every_outcome_can_be_compared():
    commands = console_commands(PAGE.read_text())
    lines = [command.line for command in commands]
    for journey in ("make run", "make serve", "make predict", "make monitor"):
        assert any(line == journey or line.startswith(journey + " ") for line in lines), journey
    assert any(line.startswith("curl ") for line in lines)
    assert [command.line for command in commands if command.is_service] == ["make serve"]
    assert all(checkable(command) for command in commands), [c.line for c in commands if not checkable(c)]


def test_the_outcome_rule():
    page = "## x\n```sh\n$ not run\n```\n```console\n$ make run\nlog\n…\ndone: report at …/data/r1\nStopping\n$ head\n"
    page += "# t\n**Test accuracy 0.61** (loss)\n```\n"
    run, head = console_commands(page)
    assert (run.line, run.outcome, head.outcome) == (
        "make run",
        "done: report at …/data/r1",
        "**Test accuracy 0.61** (loss)",
    )
    assert agrees(run.outcome, "done: report at /tmp/x/data/reports/20260101T000000Z-classic-e15-0a")
    assert not agrees(run.outcome, "done: reports at /tmp/x")
    assert not agrees(run.outcome, "error: report at /tmp/x")
    assert agrees("wrote 157 files under incoming", "wrote 400 files under incoming")
    answer = '{"label": "cat", "probability": 0.8, "top": [{"label": "cat", "probability": 0.8}], "id": "ab12"}'
    assert agrees(
        answer, '{"label": "dog", "probability": 1, "top": [{"label": "dog", "probability": 0.5}], "id": "x"}'
    )
    assert not agrees(answer, '{"class": "dog", "probability": 1, "top": [], "id": "x"}')
    assert not agrees(answer, '{"label": "dog", "probability": 1, "top": [{"name": "dog", "p": 0.5}], "id": "x"}')
    assert not agrees(answer, "Internal Server Error")
    assert not checkable(Command("ls", ("2026-12-06",)))
