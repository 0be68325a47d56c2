"""The prediction log and the reviewers' answers: one SQLite database in WAL mode (`SCHEMA`); SQLite
serializes the writers (services, predict runs) and a reader sees whole transactions only."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from cifarflow.data.shards import pixel_digest

FLUSH_S = 1.0  # a write the disk refused is tried again this often
GATHER_S = 0.05  # the writer waits this long after a row arrives for more to commit with it
MAX_HELD_ROWS = 100_000  # rows kept while the disk refuses writes; past this the oldest are dropped, logged
KEEP_DAYS = 30
SOURCES = ("service", "batch")
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order (writers are serialized): the monitor's bookmark
    prediction_id TEXT NOT NULL UNIQUE,     -- UUID4 hex, returned to the client
    time INTEGER NOT NULL,                  -- when scored: µs since 1970-01-01T00:00Z
    source TEXT NOT NULL,                   -- service | batch
    model_version TEXT NOT NULL,
    classes INTEGER NOT NULL,               -- K: the serving model's number of classes
    label INTEGER NOT NULL,                 -- the predicted class index: argmax of probabilities
    uncertainty REAL NOT NULL,              -- 1 − (p₁ − p₂), the review queue's order (feedback/queue.py)
    probabilities BLOB NOT NULL,            -- K float32, little-endian
    pixels BLOB NOT NULL,                   -- the S×S×3 uint8 image the model scored, row-major HWC (S from its length)
    pixel_sha256 TEXT NOT NULL              -- cifarflow.data.shards.pixel_digest of pixels
);
CREATE INDEX IF NOT EXISTS predictions_queue ON predictions (classes, uncertainty DESC, seq, label, prediction_id);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order given: the last answer to a prediction counts
    answer_id TEXT NOT NULL UNIQUE,         -- UUID4 hex
    prediction_id TEXT NOT NULL,
    label TEXT NOT NULL,                    -- the class the reviewer says is right
    predicted TEXT NOT NULL,                -- the class the model said
    model_version TEXT NOT NULL,
    reviewer TEXT NOT NULL,                 -- a name, never a token
    time TEXT NOT NULL                      -- ISO 8601, UTC, µs
);
CREATE INDEX IF NOT EXISTS answers_prediction ON answers (prediction_id);
"""
COLUMNS = "prediction_id, time, source, model_version, classes, label, uncertainty, probabilities, pixels, pixel_sha256"
INSERT = f"INSERT OR IGNORE INTO predictions ({COLUMNS}) VALUES ({', '.join('?' * 10)})"

log = logging.getLogger("cifarflow.monitoring")


def connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """An autocommit connection, schema made, landed files imported. NORMAL survives a kill, FULL a power cut."""
    from cifarflow.monitoring.log_import import import_landed

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:  # SQLite answers "locked" at once, not after its busy timeout, while another process sets WAL
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(SCHEMA)
    import_landed(db, Path(path))
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction holding SQLite's write lock from its start; rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def reading(path: Path, synchronous: str = "NORMAL") -> Iterator[sqlite3.Connection]:
    """A connection for one use, closed after it; OSError naming the database for any SQLite error."""
    try:
        with contextlib.closing(connect(path, synchronous)) as db:
            yield db
    except sqlite3.Error as error:
        raise OSError(
            f"the log database {path} cannot be used ({error}): make it a file this service can read "
            "and write, on a disk with space"
        ) from None


def new_ids(count: int) -> list[str]:
    """`count` fresh prediction ids: UUID4 hex (122 random bits, so two never collide in practice)."""
    return [uuid.uuid4().hex for _ in range(count)]


def micros(moment: datetime) -> int:
    """An aware datetime as the `time` column holds it; ValueError for a naive one."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone: give UTC times (…Z or +00:00)")
    return round(moment.timestamp() * 1_000_000)


def log_rows(
    ids: list[str], source: str, model_version: str, probabilities: np.ndarray, pixels: np.ndarray, at: int
) -> list[tuple]:
    """`predictions` rows for (N,) ids, (N, K) probabilities, (N, S, S, 3) uint8 pixels scored at `at` (µs);
    ValueError for an unknown source or shapes that disagree."""
    from cifarflow.feedback.queue import uncertainty

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    pixels = np.ascontiguousarray(pixels, np.uint8)
    scores = np.asarray(probabilities, "<f4").reshape(len(probabilities), -1)
    square = pixels.ndim == 4 and pixels.shape[1] == pixels.shape[2] and pixels.shape[3] == 3
    if not square or not len(ids) == len(pixels) == len(scores):
        raise ValueError(f"{len(ids)} ids, {len(scores)} probability rows and pixels of shape {pixels.shape}")
    doubt, labels = uncertainty(scores), scores.argmax(axis=1)
    n, k = len(ids), scores.shape[1]
    blobs = ([p.tobytes() for p in scores], [x.tobytes() for x in pixels], [pixel_digest(x) for x in pixels])
    return list(zip(ids, [at] * n, [source] * n, [model_version] * n, [k] * n, labels.tolist(), doubt.tolist(), *blobs))


@dataclass(frozen=True)
class Logged:
    """One logged prediction: (K,) float32 probabilities, (S, S, 3) uint8 pixels; (0,) and None when not read."""

    prediction_id: str
    time: str  # ISO 8601, UTC, seconds
    source: str
    model_version: str
    probabilities: np.ndarray
    pixels: np.ndarray | None = None


def logged(id_: str, at: int, source: str, version: str, scores: bytes, pixels: bytes | None) -> Logged:
    when = datetime.fromtimestamp(at / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    image = None if pixels is None else image_of(pixels)
    return Logged(id_, when, source, version, np.frombuffer(scores, "<f4"), image)


def image_of(blob: bytes) -> np.ndarray:
    """A pixels BLOB → (S, S, 3) uint8, S = √(length / 3); ValueError for a length that is no square RGB image."""
    side = math.isqrt(len(blob) // 3)
    if len(blob) != 3 * side * side or side == 0:
        raise ValueError(f"a pixels blob of {len(blob):,} bytes is not a square RGB image (S × S × 3 bytes)")
    return np.frombuffer(blob, np.uint8).reshape(side, side, 3)


ROW = "prediction_id, time, source, model_version"  # then probabilities and pixels: `logged`'s arguments


def find(path: Path, prediction_ids: list[str]) -> dict[str, Logged]:
    """prediction_id → its logged row with pixels, for those of `prediction_ids` the log holds."""
    return {row.prediction_id: row for row in read_window(path, prediction_ids, by="prediction_id")}


class PredictionLog:
    """The writer: `append` (any thread) queues rows, a thread commits what waits in one transaction. A write
    the disk refuses is warned and retried every `FLUSH_S`, up to `MAX_HELD_ROWS` held (`held` finds them)."""

    def __init__(self, path: Path, warn: Callable[[str], None] = log.warning):
        self.path, self.warn = Path(path), warn
        self.written = self.dropped = 0  # rows
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._closed = threading.Event()
        self._db: sqlite3.Connection | None = None  # the writer thread's
        self._held: tuple[tuple, ...] = ()  # rows taken off the queue, not committed: replaced, never changed

    def start(self) -> PredictionLog:
        connect(self.path).close()  # the schema and the import before the first request
        self._thread.start()
        return self

    def append(self, ids: list[str], source: str, model_version: str, probabilities, pixels) -> None:
        """Queue one scoring call's rows (`log_rows`), stamped now."""
        if self._closed.is_set():
            raise RuntimeError("the prediction log is closed")
        if len(ids):
            self._queue.put((ids, source, model_version, probabilities, pixels, micros(datetime.now(UTC))))

    def flush(self, timeout: float = 10) -> bool:
        """True once every row appended before the call is committed; False while the disk refuses, or on timeout."""
        if self._closed.is_set() or not self._thread.is_alive():
            return False
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self._queue.put(reply)
        try:
            return reply.get(timeout=timeout)
        except queue.Empty:
            return False

    def held(self, prediction_ids: list[str]) -> dict[str, Logged]:
        """prediction_id → row, for those of `prediction_ids` the writer holds uncommitted (a full disk)."""
        wanted = set(prediction_ids)
        return {row[0]: logged(*row[:4], row[7], row[8]) for row in self._held if row[0] in wanted}

    def close(self, timeout: float = 30) -> None:
        """Commit every queued row and stop the writer."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *_) -> None:
        self.close()

    def _run(self) -> None:
        pending: list[tuple] = []
        retry_at, stopping = 0.0, False  # retry_at: while the disk refuses writes, when to try again
        while not stopping:
            try:
                items = [self._queue.get(timeout=max(0.0, retry_at - time.monotonic()) if pending else None)]
                time.sleep(GATHER_S)  # a burst of requests shares one transaction: fewer wake-ups beside the service
            except queue.Empty:
                items = []
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            stopping = None in items
            for item in items:
                try:
                    pending += log_rows(*item) if isinstance(item, tuple) else []
                except Exception as error:  # a caller's bad rows must not stop the writer for everyone
                    self.warn(f"prediction log: {len(item[0]):,} rows not logged: {type(error).__name__}: {error}")
                    self.dropped += len(item[0])
            if pending and (stopping or time.monotonic() >= retry_at):
                pending = self._write(pending)
                retry_at = time.monotonic() + FLUSH_S if pending else 0.0
            self._held = tuple(pending)
            for reply in items:
                if isinstance(reply, queue.SimpleQueue):
                    reply.put(not pending)
        if pending:  # closed while the disk still refuses the writes
            self.dropped += len(pending)
            self.warn(f"prediction log: closed with {len(pending):,} rows it could not write; they are lost")
        if self._db is not None:
            self._db.close()

    def _write(self, pending: list[tuple]) -> list[tuple]:
        try:
            self._db = self._db or connect(self.path)
            with transaction(self._db):
                self._db.executemany(INSERT, pending)
        except (sqlite3.Error, OSError) as error:  # a full or read-only disk: the writer goes on
            self.warn(f"prediction log: {len(pending):,} rows not written yet ({error}); trying again")
            if (excess := len(pending) - MAX_HELD_ROWS) > 0:
                self.dropped += excess
                self.warn(f"prediction log: dropped {excess:,} rows that could not be written")
            return pending[-MAX_HELD_ROWS:]
        self.written += len(pending)
        return []


def window_keys(
    path: Path, after_seq: int = 0, upto_seq: int | None = None, since: datetime | None = None, until=None
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 seqs and datetime64[us] times of the rows in (after_seq, upto_seq] and (since, until], by time."""
    bounds = (after_seq, upto_seq or 2**62, micros(since) if since else -(2**62), micros(until) if until else 2**62)
    with reading(path) as db:
        rows = db.execute(
            "SELECT seq, time FROM predictions WHERE seq > ? AND seq <= ? AND time > ? AND time <= ? "
            "ORDER BY time, seq",
            bounds,
        ).fetchall()
    keys = np.asarray(rows, np.int64).reshape(-1, 2)
    return keys[:, 0], keys[:, 1].astype("datetime64[us]")


def read_window(
    path: Path, keys=None, probabilities: bool = True, by: Literal["seq", "prediction_id"] = "seq"
) -> list[Logged]:
    """The rows whose `by` is in `keys` (None: every row) with pixels, in time order."""
    where = "" if keys is None else f"WHERE {by} IN (SELECT value FROM json_each(?))"
    params = () if keys is None else (json.dumps(np.asarray(keys).tolist()),)
    scores = "probabilities" if probabilities else "x''"
    with reading(path) as db:
        rows = db.execute(f"SELECT {ROW}, {scores}, pixels FROM predictions {where} ORDER BY time, seq", params)
        return [logged(*row) for row in rows]


def last_seq(path: Path) -> int:
    """The newest seq ever given (deleted rows included: seqs are never reused); 0 for none."""
    with reading(path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'predictions'").fetchone()
    return row[0] if row else 0


def delete_older(path: Path, keep_days: int, judged_seq: int, now: datetime) -> int:
    """Delete the judged rows (seq ≤ `judged_seq`) scored over `keep_days` (≥ 1, else ValueError) days ago; how many."""
    if keep_days < 1:
        raise ValueError(f"keep_days must be at least 1, got {keep_days}")
    cut = micros(now - timedelta(days=keep_days))
    with reading(path) as db, transaction(db):
        return db.execute("DELETE FROM predictions WHERE seq <= ? AND time < ?", (judged_seq, cut)).rowcount
