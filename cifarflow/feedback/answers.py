"""The feedback log: every answer a reviewer gave, append-only, one JSON object per line.

    <data dir>/feedback/answers.jsonl

    {"answer_id": "…", "prediction_id": "…", "label": "cat", "predicted": "dog", "model_version": "v3",
     "reviewer": "alice", "time": "2026-11-30T22:15:03.123456Z"}

The service never rewrites or removes a line: answering the same prediction again appends a new line,
and the last line for a prediction is its answer (`latest`). Each append is one `write` of one line under
an exclusive `flock`, flushed and fsynced before the reviewer is told it was recorded, so concurrent
writers (threads, processes) never interleave and a kill loses no acknowledged answer. A line cut
short by a crash mid-write is skipped by the reader with a warning, and the next append starts on a
fresh line. The reviewer's name is recorded; their token never is.

An operator may rewrite the file (withdraw a reviewer's answers: `grep -v … > tmp && mv tmp
answers.jsonl`, best under `flock answers.jsonl …` so that no answer lands in the old file meanwhile): a
writer that finds the path replaced once it holds the lock appends to the new file, and a long-lived
reader (`AnswerBook`) that finds another file, a shorter one, or other bytes where its last read line
ended reads the file again from the start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

PREDICTION_ID = re.compile(r"[0-9a-f]{32}")  # a UUID4 in hex, as the prediction log writes them
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_ -]{0,63}")


@dataclass(frozen=True)
class Answer:
    """One reviewer's answer about one logged prediction: `label` is the class they say is right
    (the same as `predicted` for a confirmation)."""

    answer_id: str
    prediction_id: str
    label: str
    predicted: str
    model_version: str
    reviewer: str
    time: str  # ISO 8601, UTC, µs

    def __post_init__(self):
        """A hand-edited line must not steer a file name: ids are 32 hex digits, labels plain names."""
        if not PREDICTION_ID.fullmatch(str(self.prediction_id)):
            raise ValueError(f"prediction_id {self.prediction_id!r} is not 32 hex digits")
        if not LABEL.fullmatch(str(self.label)):
            raise ValueError(f"label {self.label!r} is not a class name")

    @property
    def corrects(self) -> bool:
        return self.label != self.predicted


def new_answer(prediction_id: str, label: str, predicted: str, model_version: str, reviewer: str) -> Answer:
    """An answer given now (UTC, µs) with a fresh id; ValueError for an id or label that is not plain."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return Answer(uuid.uuid4().hex, prediction_id, label, predicted, model_version, reviewer, stamp)


def append_answer(path: Path, answer: Answer) -> None:
    """Append `answer` as one line and fsync it; OSError (a full or read-only disk) reaches the caller,
    who must not report the answer as recorded."""
    fd = open_locked(path)
    try:
        write_line(fd, answer)
    finally:
        os.close(fd)  # releases the lock


def open_locked(path: Path) -> int:
    """A descriptor of `path` (created if missing) for appending, holding its exclusive `flock`: the file
    that is at `path` once the lock is held (one replaced meanwhile by a rename is left for the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (IsADirectoryError, PermissionError) as error:
            raise unusable(path, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), os.stat(path)
        except FileNotFoundError:  # renamed away and not replaced yet: open what is there now
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)


def unusable(path: Path, error: OSError) -> OSError:
    """`error` (its errno kept) restated to name the feedback log and the fix."""
    return OSError(error.errno, f"the feedback log {path} cannot be used ({error.strerror}): make it a file "
                                "this service can read and write")  # fmt: skip


def write_line(fd: int, answer: Answer) -> None:
    """Append `answer` as one line to `fd` (opened by `open_locked`) and fsync it."""
    line = json.dumps(asdict(answer), sort_keys=True).encode() + b"\n"
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":  # a line a crash cut short: start a fresh one
        line = b"\n" + line
    os.write(fd, line)
    os.fsync(fd)


def read_answers(path: Path, warn: Callable[[str], None] = log.warning) -> list[Answer]:
    """Every answer in the file, in the order given; [] when there is none yet. A line that is not a
    whole answer (cut short, edited by hand) is named in a warning and skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_lines(raw[: raw.rfind(b"\n") + 1], path, warn)  # a line still being written: next time


def parse_lines(raw: bytes, path: Path, warn: Callable[[str], None]) -> list[Answer]:
    """The answers in `raw` (whole JSON lines); each line that is not an answer is named in a warning."""
    answers = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            answers.append(Answer(**json.loads(line)))
        except (ValueError, TypeError) as error:
            warn(f"feedback log {path} line {number} skipped: not an answer ({type(error).__name__}: {error})")
    return answers


def latest(answers: list[Answer]) -> dict[str, Answer]:
    """prediction_id → its last answer (the one that counts), in the order the predictions were first answered."""
    last: dict[str, Answer] = {}
    for answer in answers:
        last[answer.prediction_id] = answer
    return last


class AnswerBook:
    """The feedback log's current answers, kept up to date by reading only what was appended since the
    last look (other processes append too), and read again from the start when the file was replaced
    (another device or inode), cut (shorter than what was read) or rewritten in place (other bytes where
    the last read line was). Thread-safe; `record` is atomic across processes too."""

    def __init__(self, path: Path, warn: Callable[[str], None] = log.warning):
        self.path, self.warn = Path(path), warn
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0  # bytes of it read: whole lines
        self._last_line = b""  # the last line read, which must still end at `_offset`
        self._latest: dict[str, Answer] = {}
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, Answer]:
        """prediction_id → its last answer, as the file stands now (a copy). OSError naming the file and the
        fix while it cannot be read (a directory, no permission), again at each call until it is fixed."""
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self._file, self._offset, self._last_line, self._latest = None, 0, b"", {}
                return {}
            except (IsADirectoryError, PermissionError) as error:
                raise unusable(self.path, error) from None
            try:
                self._catch_up(fd)
            except IsADirectoryError as error:
                raise unusable(self.path, error) from None
            finally:
                os.close(fd)
            return dict(self._latest)

    def record(self, answer: Answer) -> bool:
        """Append `answer`; True if it replaces an earlier answer to the same prediction. Decided under
        the file's lock, so of concurrent first answers to a prediction (any process) exactly one is False."""
        fd = open_locked(self.path)  # first: the file's lock orders the threads of this process too
        try:
            with self._lock:
                self._catch_up(fd)
                replaced = answer.prediction_id in self._latest
                write_line(fd, answer)
                self._catch_up(fd)
        finally:
            os.close(fd)  # releases the lock
        return replaced

    def _catch_up(self, fd: int) -> None:
        """Read what `fd`'s file holds past what was read; all of it when it is not the file read before."""
        stat = os.fstat(fd)
        same = (
            self._file == (stat.st_dev, stat.st_ino)
            and stat.st_size >= self._offset
            and os.pread(fd, len(self._last_line), self._offset - len(self._last_line)) == self._last_line
        )
        if not same:
            self._file, self._offset, self._last_line, self._latest = (stat.st_dev, stat.st_ino), 0, b"", {}
        appended = os.pread(fd, stat.st_size - self._offset, self._offset)
        whole = appended[: appended.rfind(b"\n") + 1]  # a line still being written waits for the next look
        if whole:
            self._offset += len(whole)
            self._last_line = whole[whole[:-1].rfind(b"\n") + 1 :]
            self._latest.update(latest(parse_lines(whole, self.path, self.warn)))
