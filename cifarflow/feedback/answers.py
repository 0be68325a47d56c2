"""The reviewers' answers: the append-only `answers` table of the log database; the last answer to a prediction
counts. Each is committed with synchronous=FULL before the reviewer hears."""

from __future__ import annotations

import re
import uuid
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from cifarflow.monitoring.log import reading, transaction

PREDICTION_ID = re.compile(r"[0-9a-f]{32}")  # a UUID4 in hex, as the prediction log writes them
MAX_LABEL = 255  # characters: a class folder's name fits


@dataclass(frozen=True)
class Answer:
    """One reviewer's answer about one logged prediction: `label`, the class they say is right."""

    answer_id: str
    prediction_id: str
    label: str
    predicted: str
    model_version: str
    reviewer: str
    time: str  # ISO 8601, UTC, µs

    def __post_init__(self):
        if not PREDICTION_ID.fullmatch(str(self.prediction_id)):
            raise ValueError(f"prediction_id {self.prediction_id!r} is not 32 hex digits")
        if not is_class_name(str(self.label)):
            raise ValueError(f"label {self.label!r} is not a class name")


def is_class_name(text: str) -> bool:
    """Whether `text` can name a class folder (the export writes `<label>/<prediction_id>.png`): printable, at most
    MAX_LABEL characters, no path separator, not hidden (ingest ignores names starting with '.')."""
    return 0 < len(text) <= MAX_LABEL and text.isprintable() and not ({"/", "\\"} & set(text)) and text[0] != "."


ANSWER_FIELDS = tuple(f.name for f in fields(Answer))
INSERT_ANSWER = f"INSERT INTO answers ({', '.join(ANSWER_FIELDS)}) VALUES ({', '.join('?' * len(ANSWER_FIELDS))})"


def new_answer(prediction_id: str, label: str, predicted: str, model_version: str, reviewer: str) -> Answer:
    """An answer given now (UTC, µs) with a fresh id; ValueError for an id or label that is not plain."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return Answer(uuid.uuid4().hex, prediction_id, label, predicted, model_version, reviewer, stamp)


class AnswerBook:
    """The answers in the log database at `path`, one transaction a call; OSError naming the file when unusable."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self, answer: Answer) -> bool:
        """Store `answer` durably; True if it replaces an earlier answer (decided under SQLite's write lock)."""
        with reading(self.path, synchronous="FULL") as db, transaction(db):
            earlier = db.execute("SELECT 1 FROM answers WHERE prediction_id = ?", (answer.prediction_id,))
            replaced = earlier.fetchone() is not None
            db.execute(INSERT_ANSWER, astuple(answer))
        return replaced

    def refresh(self) -> dict[str, Answer]:
        """prediction_id → its last answer, in the order the predictions were first answered."""
        with reading(self.path) as db:
            rows = db.execute(
                f"SELECT {', '.join('a.' + name for name in ANSWER_FIELDS)} FROM answers a JOIN "
                "(SELECT MIN(seq) AS first, MAX(seq) AS last FROM answers GROUP BY prediction_id) g "
                "ON a.seq = g.last ORDER BY g.first"
            ).fetchall()
        return {row[1]: Answer(*row) for row in rows}
