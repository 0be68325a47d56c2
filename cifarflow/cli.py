"""What every command of the product shares: how it ends, and how it reaches a Prefect API.

The last line a command prints on stdout is `done: …` or `error: …` (what went wrong and what to do),
so a cron job, a shell loop or a person can read the outcome from one line; no condition a user can
cause ends in a raw traceback (`run_command`). Exit codes, declared once:

    0  done            1  failed (the flow ran and failed, or nothing could be done)
    2  unusable arguments or input, refused before any work (a bad option, a damaged file named)

The rule between 1 and 2 is *when* a problem is found, not what it is: what the command's checks
refuse before any work starts is 2; anything found once the work has started (a damaged archive met
while ingesting, a model that will not load, files removed meanwhile) is 1. Every command's `main`
is `run_cli(parser, check, run, argv, what=...)`, which applies the rule in one place.

Commands that run flows call `ensure_prefect_api()` first: with no `PREFECT_API_URL`, Prefect starts
a temporary server per process, and several commands starting one at once on the same
`PREFECT_HOME` (two cron jobs, a shell loop) race on its database and time out. Here the start-up is
serialised by a lock in `PREFECT_HOME`, waited for with a generous timeout, and retried.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from cifarflow.errors import PipelineInputError
from cifarflow.paths import printable

Checked = TypeVar("Checked")

EXIT_DONE, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

SERVER_START_TIMEOUT_S = 180  # per attempt: a fresh home migrates its database first (≈ 10 s idle, far more when busy)
SERVER_START_ATTEMPTS = 3
START_LOCK_NAME = ".cifarflow-server-start.lock"


def done(message: str) -> int:
    """Print the command's last line for success (as `printable` text: a path's name may not be UTF-8);
    returns EXIT_DONE."""
    print(f"done: {printable(message)}", flush=True)
    return EXIT_DONE


PROBLEMS_SHOWN = 20  # per command run; the report file has every one


def print_problems(
    heading: str, problems: Sequence[tuple[str, str]], report: str | os.PathLike, total: int | None = None
) -> None:
    """Print each item the run could not take and why (`  <item>: <why>`), under `heading`: the first
    PROBLEMS_SHOWN of them, then `  … and N more: see <report>`, the file that lists all `total` (default:
    as many as given). Nothing when there are none."""
    shown = problems[:PROBLEMS_SHOWN]
    if not shown:
        return
    print(f"{heading}:")
    for item, why in shown:
        print(f"  {printable(item)}: {printable(why)}")
    if (total or len(problems)) > len(shown):
        print(f"  … and {(total or len(problems)) - len(shown):,} more: see {printable(report)}")


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print the command's last line for a failure (on stdout, where `done:` would be); returns `code`."""
    sys.stderr.flush()
    print(f"error: {printable(message)}", flush=True)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, ending an unusable command line like every other refusal: the usage on
    stderr, then `error: …` as the last stdout line, exit 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        raise SystemExit(fail(f"{message} (see {self.prog} --help)", EXIT_USAGE))


def option_problems(error: ValidationError) -> str:
    """A config's ValidationError in the command line's words: `--epochs: Input should be greater than 0; …`
    (the field `batch_size` is the option `--batch-size`; a check across fields is `--options`)."""
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
    """A command: parse `argv`, `check` the arguments, `run` what they ask for; returns the exit code.

    - `check(args)` builds what the run needs (a typed config, a layout) and does no work; a
      pydantic ValidationError (named by option, `option_problems`) or a PipelineInputError it raises
      ends the command with exit 2, as argparse's own refusals do.
    - `run(args, checked)` does the work and returns its exit code (`done(…)`, or `fail(…)` for an
      outcome it reports itself). A PipelineInputError it raises ends with its message and exit 1: found
      during the run, it is a failure of the run, not of the arguments. Any other exception ends with
      `<what> failed: Type: message` and exit 1 (`what`: e.g. "pipeline", or a function of the
      arguments); its traceback goes to stderr unless Prefect logged it already (a flow run's error).
    """
    args = parser.parse_args(argv)
    try:
        checked = check(args)
    except ValidationError as error:
        return fail(f"invalid options: {option_problems(error)}", EXIT_USAGE)
    except PipelineInputError as error:
        return fail(str(error), EXIT_USAGE)
    try:
        return run(args, checked)
    except PipelineInputError as error:
        return fail(str(error), EXIT_FAILED)
    except Exception as error:
        if not logged_by_prefect(error):
            traceback.print_exc(file=sys.stderr)
        return fail(f"{what if isinstance(what, str) else what(args)} failed: {type(error).__name__}: {error}")


def logged_by_prefect(error: BaseException) -> bool:
    """True when `error` came out of a Prefect flow or task run, whose engine logged its traceback."""
    return any(
        frame.f_globals.get("__name__", "").startswith("prefect.")
        for frame, _ in traceback.walk_tb(error.__traceback__)
    )


def run_command(main: Callable[[], int]) -> int:
    """Run a command's `main`; anything it did not handle becomes an `error:` line (the traceback goes
    to stderr for a bug report), Ctrl-C becomes `error: interrupted`. Use: `sys.exit(run_command(main))`."""
    try:
        return main()
    except KeyboardInterrupt:
        return fail("interrupted; nothing half-written was left behind (outputs are written atomically)", 130)
    except SystemExit:
        raise
    except Exception as error:  # a bug or an environment problem: keep the details, end with one line
        traceback.print_exc(file=sys.stderr)
        return fail(f"{type(error).__name__}: {error} (the traceback above is for a bug report)")


def prefect_home() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser()


def uses_temporary_server() -> bool:
    """True when this process would start Prefect's temporary server (no PREFECT_API_URL set)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


@contextlib.contextmanager
def start_lock(lock_file: Path, log: Callable[[str], None]) -> Iterator[None]:
    """An exclusive flock on `lock_file`; says once that it waits when another command holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another command to start Prefect's temporary server ({lock_file})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_prefect_api(log: Callable[[str], None] | None = None) -> None:
    """Start Prefect's temporary server now, one command at a time per PREFECT_HOME, when no
    PREFECT_API_URL is set; nothing when one is. The flow then reuses this process's server.

    Raises RuntimeError naming what to do when it cannot start after SERVER_START_ATTEMPTS tries.
    """
    if not uses_temporary_server():
        return
    from prefect.server.api.server import SubprocessASGIServer

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    last: Exception | None = None
    with start_lock(prefect_home() / START_LOCK_NAME, log):
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
    """An argparse `type` for comma-separated values of `kind` ("0.1, 0.01" → [0.1, 0.01]); a value
    `kind` refuses makes argparse name the option (exit 2)."""

    def parse(text: str) -> list:
        return [kind(value.strip()) for value in text.split(",") if value.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse
