"""Writes of several steps that a kill cannot leave half-judged: an intent record (the journal).

A run writes the journal (atomically) before its first step, naming what it is about to do and all
the next run needs to finish it; each step is idempotent; the last step removes the journal. A run
that starts under the same lock and finds a journal was preceded by a killed (or failed) run: it
finishes what the journal names, or undoes it where the first lasting step had not happened, and
says which (a log line and its summary).

    <data dir>/.intake-journal.json              an add_images or withdraw run (flows/add_images.py)
    <data dir>/feedback/.export-journal.json     a feedback export (flows/feedback_flow.py)
    <data dir>/monitoring/.run-journal.json      an incremental monitor run (cifarflow/monitoring/monitor.py)
    <data dir>/monitoring/.merge-journal.json    a merge of judged log files (the same)

Test hook: `CIFARFLOW_KILL_AT=<point>` makes the process SIGKILL itself at that `kill_point` (the
points are named where they are called), so tests can kill a real run between two of its writes.
"""

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
    """The journal a killed run left, or None. PipelineInputError, naming the file (`damaged`), if it is
    not a JSON object holding every one of `fields` (it is written atomically, so only a hand or a
    failing disk damages it)."""
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
    """The error for a journal that cannot be followed: it names the file, what is wrong and what to do."""
    return PipelineInputError(
        f"{path} is damaged ({problem}): it records a run that was killed mid-way; delete it to go on "
        "without finishing that run (check its output by hand)"
    )


def end(path: Path) -> None:
    """The run's last step: nothing is left to finish."""
    path.unlink(missing_ok=True)


def kill_point(name: str) -> None:
    """A point between two writes; the process SIGKILLs itself here when $CIFARFLOW_KILL_AT names it."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
