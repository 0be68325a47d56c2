"""One-time import of the landed main's files (monitoring/log/ day files, feedback/answers.jsonl) into the log
database; the old files are renamed `<name>.imported`, the monitor state set to the seq the judged files end at."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.feedback.answers import ANSWER_FIELDS, INSERT_ANSWER, Answer
from cifarflow.files import read_json, write_json
from cifarflow.layout import DataLayout

log = logging.getLogger("cifarflow.monitoring")


def import_landed(db: sqlite3.Connection, path: Path) -> None:
    """Import the landed files of the data dir whose `prediction_log` is `path`, in one transaction; unreadable
    files and answer lines are warned and skipped."""
    layout = DataLayout(path.parent.parent)
    folder, answers = layout.monitoring / "log", layout.feedback / "answers.jsonl"  # where the landed main kept them
    if layout.prediction_log != path or not (folder.exists() or answers.exists()):
        return
    from cifarflow.monitoring.log import transaction

    try:
        with transaction(db):
            if not (folder.exists() or answers.exists()):
                return  # another process imported them while this one waited for the write lock
            judged_seq = import_log(db, folder, judged_files(layout.monitor_state)) if folder.is_dir() else None
            if answers.is_file():
                db.executemany(INSERT_ANSWER.replace("INSERT", "INSERT OR IGNORE"), answer_rows(answers))
    except FileNotFoundError:
        return  # moved aside by another importer under way
    if judged_seq is not None:
        state = read_json(layout.monitor_state)
        write_json(layout.monitor_state, {"seq": judged_seq, "newest": state.get("newest"), "run": state.get("run")})
    (layout.monitoring / ".merge-journal.json").unlink(missing_ok=True)  # merges are gone
    for old in (folder, answers):
        if old.exists():
            old.rename(old.with_name(old.name + ".imported"))
    log.warning("imported %s and %s into %s; the old files are renamed *.imported", folder, answers, path)


def judged_files(state: Path) -> set[str] | None:
    """The `day=…/name.parquet` keys the landed monitor state names as judged; None without that state."""
    try:
        return set(read_json(state)["judged"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def import_log(db: sqlite3.Connection, folder: Path, judged: set[str] | None) -> int | None:
    """Insert the day files' rows, judged files first; the seq the judged rows end at (None without a state)."""
    from cifarflow.monitoring.log import INSERT, image_of, log_rows

    files = sorted(p for p in folder.glob("day=*/*.parquet") if not p.name.startswith((".", "_")))
    is_judged = {
        p: judged is not None and (p.name == "day.parquet" or f"{p.parent.name}/{p.name}" in judged) for p in files
    }
    judged_seq = None
    for path in sorted(files, key=lambda p: not is_judged[p]):
        if judged is not None and judged_seq is None and not is_judged[path]:
            judged_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM predictions").fetchone()[0]
        try:
            rows = pq.read_table(path).sort_by("time").to_pylist()
        except (OSError, pa.ArrowException) as error:
            log.warning("%s not imported: %s", path, error)
            continue
        for row in rows:
            pixels = image_of(row["pixels"])[None]
            at = round(row["time"].timestamp() * 1_000_000)
            scores = np.asarray([row["probabilities"]], np.float32)
            db.executemany(
                INSERT, log_rows([row["prediction_id"]], row["source"], row["model_version"], scores, pixels, at)
            )
    if judged is not None and judged_seq is None:
        judged_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM predictions").fetchone()[0]
    return judged_seq


def answer_rows(path: Path) -> list[tuple]:
    """The answers of a landed answers.jsonl, in order; a line that is not one is warned and skipped."""
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            answer = Answer(**json.loads(line))
        except (ValueError, TypeError) as error:
            log.warning("%s line %d not imported: %s", path, number, error)
            continue
        rows.append(tuple(getattr(answer, name) for name in ANSWER_FIELDS))
    return rows
