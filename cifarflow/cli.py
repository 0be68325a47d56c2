"""What every command shares: its last stdout line (`done: …` or `error: …`), its Prefect API, its exit code
(`run_cli`; what each means: `EXIT_CODES`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cifarflow.errors import PipelineInputError
from cifarflow.lock import data_dir_lock
from cifarflow.paths import printable

Checked = TypeVar("Checked")

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = {  # every exit code a command ends with, and when (docs/reference/exit-codes.md shows them)
    EXIT_DONE: "done: the command did what it was asked; the last line is `done: …`",
    EXIT_FAILED: "failed: the work had started and did not succeed, whatever stopped it (a damaged file met while "
    "running, a model that will not load, the data dir busy past --lock-timeout, an unexpected error)",
    EXIT_USAGE: "refused before any work: a bad option or value, a missing folder, an unknown or damaged version "
    "named; the message names the option",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); nothing half-written is left behind (the service, whose way to end is "
    "Ctrl-C or SIGTERM, ends with 0 and `done: the service stopped`)",
}

SERVER_START_TIMEOUT_S = 180  # per try: a fresh home migrates its database first (≈ 10 s idle, far more when busy)
SERVER_START_ATTEMPTS = 3
START_LOCK_NAME = ".cifarflow-server-start.lock"


def done(message: str) -> int:
    """Print the last line for success, `done: <message>` as `printable` text; returns EXIT_DONE."""
    print(f"done: {printable(message)}", flush=True)
    return EXIT_DONE


PROBLEMS_SHOWN = 20  # per command run; the report file has every one


def print_problems(
    heading: str, problems: Sequence[tuple[str, str]], report: str | os.PathLike, total: int | None = None
) -> None:
    """Print `  <item>: <why>` under `heading` for the first PROBLEMS_SHOWN problems, then `  … and N more: see
    <report>` for the rest of `total` (default: len(problems))."""
    shown = problems[:PROBLEMS_SHOWN]
    if not shown:
        return
    print(f"{heading}:")
    for item, why in shown:
        print(f"  {printable(item)}: {printable(why)}")
    if (total or len(problems)) > len(shown):
        print(f"  … and {(total or len(problems)) - len(shown):,} more: see {printable(report)}")


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print the last line for a failure, `error: <message>` on stdout; returns `code`."""
    sys.stderr.flush()
    print(f"error: {printable(message)}", flush=True)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser; an unusable command line prints the usage on stderr, then `error: …`, exit 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise SystemExit(fail(f"{message} (see {self.prog} --help)", EXIT_USAGE))


def option_problems(error: ValidationError) -> str:
    """A ValidationError by option: `--batch-size: Input should be greater than 0; …` (`--options`: across fields)."""
    return "; ".join(
        f"--{'-'.join(map(str, e['loc'])).replace('_', '-') or 'options'}: {e['msg']}" for e in error.errors()
    )


def run_cli(
    parser: argparse.ArgumentParser,
    check: Callable[[argparse.Namespace], Checked],
    run: Callable[[argparse.Namespace, Checked], int],
    argv: Sequence[str] | None = None,
    *,
    what: str | Callable[[argparse.Namespace], str],
) -> int:
    """Parse `argv`, `check` the arguments (no work), `run` them; the exit code: 2 for a ValidationError or
    PipelineInputError from `check`, 130 for Ctrl-C, else 1 for an exception (`<what> failed: Type: message`)."""
    args = parser.parse_args(argv)
    try:
        try:
            checked = check(args)
        except ValidationError as error:
            return fail(f"invalid options: {option_problems(error)}", EXIT_USAGE)
        except PipelineInputError as error:
            return fail(str(error), EXIT_USAGE)
        return run(args, checked)
    except KeyboardInterrupt:
        return fail(
            "interrupted; nothing half-written was left behind (outputs are written atomically)", EXIT_INTERRUPTED
        )
    except PipelineInputError as error:
        return fail(str(error), EXIT_FAILED)
    except Exception as error:
        frames = traceback.walk_tb(error.__traceback__)
        if not any(frame.f_globals.get("__name__", "").startswith("prefect.") for frame, _ in frames):
            traceback.print_exc(file=sys.stderr)  # Prefect's engine logged it already
        return fail(f"{what if isinstance(what, str) else what(args)} failed: {type(error).__name__}: {error}")


def ensure_prefect_api(log: Callable[[str], None] | None = None) -> None:
    """With no PREFECT_API_URL, start this process's temporary Prefect server, one command at a time per
    PREFECT_HOME (they race on its database); RuntimeError after SERVER_START_ATTEMPTS failed tries."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    last: Exception | None = None
    lock_file = Path(PREFECT_HOME.value()).expanduser() / START_LOCK_NAME
    with data_dir_lock(lock_file, math.inf, log, holder_kind="command that starts Prefect's temporary server"):
        for attempt in range(1, SERVER_START_ATTEMPTS + 1):
            server = SubprocessASGIServer()
            try:
                server.start(timeout=SERVER_START_TIMEOUT_S)
                return
            except Exception as error:  # a timeout, a port taken meanwhile, a database busy
                last = error
                server.stop()
                log(f"Prefect's temporary server did not start (try {attempt} of {SERVER_START_ATTEMPTS}): {error}")
                time.sleep(2 * attempt)
    raise RuntimeError(
        f"Prefect's temporary server did not start after {SERVER_START_ATTEMPTS} tries ({last}). For many commands "
        "at once, start one server (`make server`) and export PREFECT_API_URL=http://127.0.0.1:4200/api"
    )


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse `type` for comma-separated values of `kind`: "0.1, 0.01" → [0.1, 0.01]."""

    def parse(text: str) -> list:
        return [kind(value.strip()) for value in text.split(",") if value.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse
