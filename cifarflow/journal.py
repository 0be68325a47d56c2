"""An intent record (`DataLayout.*_journal`) for writes of several idempotent steps: `begin` before the first, `end`
after the last; the next run under the same lock finishes or undoes what `unfinished` returns."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, write_json

KILL_AT = "CIFARFLOW_KILL_AT"


def begin(path: Path, record: dict[str, Any]) -> None:
    """Write the journal: the run is about to change what `record` names."""
    write_json(path, record)


def unfinished(path: Path, fields: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The journal a killed run left, or None; PipelineInputError if it is not a JSON object with `fields`."""
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError) as error:
        raise damaged(path, f"{type(error).__name__}: {error}") from None
    if not isinstance(record, dict):
        raise damaged(path, "not a JSON object")
    missing = [name for name in fields if name not in record]
    if missing:
        raise damaged(path, f"no `{missing[0]}` field")
    return record


def damaged(path: Path, problem: str) -> PipelineInputError:
    return PipelineInputError(
        f"{path} is damaged ({problem}): it records a run that was killed mid-way; delete it to go on "
        "without finishing that run (check its output by hand)"
    )


def end(path: Path) -> None:
    """The run's last step: nothing is left to finish."""
    path.unlink(missing_ok=True)


def kill_point(name: str) -> None:
    """A point between two writes; the process SIGKILLs itself here when $CIFARFLOW_KILL_AT names it (tests)."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
