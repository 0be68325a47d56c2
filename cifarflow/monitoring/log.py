"""The prediction log: every image the champion scores, as it saw it, with what it answered.

    <data dir>/monitoring/log/day=2026-11-30/20261130T101500123456Z-<pid>-<token>-000042.parquet

One row per scored image (`SCHEMA`): `prediction_id` (a UUID4 in hex, also returned to the client),
`time` (UTC, µs), `source` (`service` or `batch`), `model_version`, `probabilities` (float32, one per
class), `pixels` (the 32×32×3 uint8 image the model scored, row-major HWC, 3,072 bytes) and
`pixel_sha256` (the digest the intake compares, `cifarflow.data.shards.pixel_digest`). No client
address, no file name.

Writes stay off the request path: `PredictionLog.append` puts the rows on a queue and returns; a
background thread flushes them every `FLUSH_S` seconds or every `FLUSH_ROWS` rows, whichever comes
first. Each flush is a new zstd Parquet file, written under a hidden temporary name and renamed into
place (`cifarflow.files.atomic_path`), so a reader never sees half a file and a `kill -9` loses at
most the rows of the last second. Files are partitioned by UTC day (Hive style, `day=YYYY-MM-DD`): a
window opens only the days it spans, retention deletes whole day folders (`delete_older`), and each
finished day's one-second files are merged into one (`compact_days`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cifarflow.data.archive import IMAGE_SHAPE
from cifarflow.data.shards import pixel_digest
from cifarflow.files import atomic_path

FLUSH_S = 1.0  # the most a kill -9 loses: the rows of the last flush interval
FLUSH_ROWS = 2_000  # …or a flush as soon as this many rows wait
MAX_PENDING_ROWS = 100_000  # rows kept while the disk refuses writes; past this the oldest are dropped, logged
KEEP_DAYS = 30
SOURCES = ("service", "batch")
PIXEL_BYTES = int(np.prod(IMAGE_SHAPE))
DAY_PREFIX = "day="
COMPACT_LOCK = ".compact.lock"  # held by a merge (exclusive) and by readers that pause merges (shared)
COMPACTED = "day.parquet"  # a finished day's files merged (compact_days)

SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("model_version", pa.string()),
        ("probabilities", pa.list_(pa.float32())),
        ("pixels", pa.binary(PIXEL_BYTES)),
        ("pixel_sha256", pa.string()),
    ]
)

log = logging.getLogger("cifarflow.monitoring")


def new_ids(count: int) -> list[str]:
    """`count` fresh prediction ids: UUID4 hex (122 random bits, so two never collide in practice)."""
    return [uuid.uuid4().hex for _ in range(count)]


def log_table(
    ids: list[str], source: str, model_version: str, probabilities: np.ndarray, pixels: np.ndarray, at: datetime
) -> pa.Table:
    """Rows for one scoring call: (N,) ids, (N, classes) float probabilities, (N, 32, 32, 3) uint8 pixels,
    all scored at `at` (UTC). ValueError for an unknown source or shapes that disagree."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    pixels = np.ascontiguousarray(pixels, np.uint8)
    if pixels.shape[1:] != IMAGE_SHAPE or not len(ids) == len(pixels) == len(probabilities):
        raise ValueError(f"{len(ids)} ids, {len(probabilities)} probability rows and pixels of shape {pixels.shape}")
    count = len(ids)
    flat = np.asarray(probabilities, np.float32).reshape(count, -1)
    offsets = np.arange(count + 1, dtype=np.int32) * flat.shape[1]
    return pa.table(
        {
            "prediction_id": pa.array(ids, pa.string()),
            "time": pa.array([at] * count, SCHEMA.field("time").type),
            "source": pa.array([source] * count, pa.string()),
            "model_version": pa.array([model_version] * count, pa.string()),
            "probabilities": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.ravel(), pa.float32())),
            "pixels": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(PIXEL_BYTES), count, [None, pa.py_buffer(pixels.tobytes())]
            ),
            "pixel_sha256": pa.array([pixel_digest(image) for image in pixels], pa.string()),
        },
        schema=SCHEMA,
    )


def write_log_file(root: Path, table: pa.Table, name: str) -> list[Path]:
    """Write `table` under `root`, one file per UTC day its rows fall on, each atomically; the paths."""
    written = []
    days = pc.strftime(table["time"], format="%Y-%m-%d", locale="C")
    for day in pc.unique(days).to_pylist():
        rows = table.filter(pc.equal(days, day))
        path = Path(root) / f"{DAY_PREFIX}{day}" / name
        with atomic_path(path) as tmp, open(tmp, "wb") as sink:
            pq.write_table(rows, sink, compression="zstd")
        written.append(path)
    return written


@dataclass
class FlushRequest:
    """`PredictionLog.flush`'s message to the writer: `done` is set once it has tried; `written` says how."""

    done: threading.Event = field(default_factory=threading.Event)
    written: bool = False


class PredictionLog:
    """The background writer: `append(table)` from any thread; `close()` flushes what waits and stops.

    `flush_s`, `flush_rows`: when a flush happens (see the module docstring). A flush that fails (disk
    full, read-only) is logged and tried again at the next interval with the rows kept, up to
    `MAX_PENDING_ROWS`; the oldest beyond are dropped and counted in `dropped`. Rows kept so are not on
    disk, but `held` finds them (the service answers a review of one all the same)."""

    def __init__(
        self, root: Path, flush_s: float = FLUSH_S, flush_rows: int = FLUSH_ROWS, warn: Callable = log.warning
    ):
        self.root, self.flush_s, self.flush_rows, self.warn = Path(root), flush_s, flush_rows, warn
        self.written = self.dropped = 0  # rows
        self._queue: queue.SimpleQueue[tuple | FlushRequest | None] = queue.SimpleQueue()
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._files = 0
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._held: tuple[pa.Table, ...] = ()  # the rows taken off the queue, not written yet: replaced, never changed

    def start(self) -> PredictionLog:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def append(self, ids: list[str], source: str, model_version: str, probabilities, pixels) -> None:
        """Queue one scoring call's rows (see `log_table`), stamped now; the table is built and written on
        the writer's thread, so the caller pays for a queue put and nothing else."""
        if self._closed.is_set():
            raise RuntimeError("the prediction log is closed")
        if len(ids):
            self._queue.put((ids, source, model_version, probabilities, pixels, datetime.now(UTC)))

    def flush(self, timeout: float = 10) -> bool:
        """Write what waits now, not at the next interval; True once it is on disk (False: the write failed
        or took over `timeout` seconds; while writes fail, they are retried at the interval, not per call: the
        rows stay queued). For a reader that must see a row just appended."""
        if self._closed.is_set() or self._thread is None:
            return False
        request = FlushRequest()
        self._queue.put(request)
        return request.done.wait(timeout) and request.written

    def held(self, prediction_ids: list[str]) -> pa.Table:
        """The rows of `prediction_ids` the writer holds and has not written yet (SCHEMA; empty for none):
        after a `flush()` that returned False, the rows a disk that refuses writes keeps off the log."""
        tables = self._held
        if not tables:
            return SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        return table.filter(pc.is_in(table["prediction_id"], pa.array(list(prediction_ids), pa.string())))

    def close(self, timeout: float = 30) -> None:
        """Flush every queued row and stop the writer."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> PredictionLog:
        return self.start()

    def __exit__(self, *_) -> None:
        self.close()

    def _run(self) -> None:
        pending: list[pa.Table] = []
        due = None  # when the oldest pending rows must be written
        stopping = failing = False
        while not stopping:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            request = None  # a flush() waiting for its answer
            try:
                item = self._queue.get(timeout=timeout)
                if item is None:
                    stopping = True
                elif isinstance(item, FlushRequest):
                    request = item
                else:
                    pending.append(self._table(item))
                    self._held = tuple(pending)
                    due = due or time.monotonic() + self.flush_s
            except queue.Empty:
                pass
            rows = sum(t.num_rows for t in pending)
            # after a failure, retry at the interval only (not for every full batch or flush() call)
            early = (rows >= self.flush_rows or request is not None) and not failing
            if pending and (stopping or early or time.monotonic() >= due):
                pending = self._flush(pending, rows)
                self._held = tuple(pending)
                failing = bool(pending)
                due = time.monotonic() + self.flush_s if pending else None
            if request is not None:
                request.written = not pending
                request.done.set()
        if pending:  # closed while the disk still refuses the writes
            lost = sum(t.num_rows for t in pending)
            self.dropped += lost
            self.warn(f"prediction log: closed with {lost:,} rows it could not write; they are lost")

    def _table(self, item: tuple) -> pa.Table:
        try:
            return log_table(*item)
        except Exception as error:  # a caller's bad rows must not stop the writer for everyone
            self.warn(f"prediction log: {len(item[0]):,} rows not logged: {type(error).__name__}: {error}")
            self.dropped += len(item[0])
            return SCHEMA.empty_table()

    def _flush(self, pending: list[pa.Table], rows: int) -> list[pa.Table]:
        """Write the pending rows; what is still pending afterwards (the rows, if the write failed)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._files += 1
        try:
            write_log_file(self.root, pa.concat_tables(pending), f"{stamp}-{self._token}-{self._files:06d}.parquet")
        except Exception as error:  # a full or read-only disk (OSError), whatever else: the writer goes on
            self.warn(f"prediction log: {rows:,} rows not written yet ({type(error).__name__}: {error}); trying again")
            while rows > MAX_PENDING_ROWS and len(pending) > 1:
                first = pending.pop(0)
                rows -= first.num_rows
                self.dropped += first.num_rows
                self.warn(f"prediction log: dropped {first.num_rows:,} rows that could not be written")
            return pending
        self.written += rows
        return []


# --- reading --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogWindow:
    """Logged rows in time order: (N,) ids, times (numpy datetime64[us], UTC), model versions and sources;
    (N, classes) float32 probabilities ((N, 0) when not read); (N, 32, 32, 3) uint8 pixels."""

    ids: np.ndarray
    times: np.ndarray
    sources: np.ndarray
    model_versions: np.ndarray
    probabilities: np.ndarray
    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def start(self) -> datetime | None:
        return _to_datetime(self.times[0]) if len(self) else None

    @property
    def end(self) -> datetime | None:
        return _to_datetime(self.times[-1]) if len(self) else None


def _to_datetime(value: np.datetime64) -> datetime:
    return value.astype("datetime64[us]").astype(datetime).replace(tzinfo=UTC)


def day_of(folder: Path) -> date | None:
    """The UTC day of a `day=YYYY-MM-DD` folder; None for any other name."""
    try:
        return date.fromisoformat(folder.name.removeprefix(DAY_PREFIX)) if folder.name.startswith(DAY_PREFIX) else None
    except ValueError:
        return None


def log_files(root: Path, first: date | None = None, last: date | None = None) -> list[Path]:
    """The log's files of the days from `first` to `last` (either open), in name order (a writer's files
    in the order written). Hidden files (writes in progress, `._*` copies) and `_*` files are never read,
    as pyarrow skips them in a folder it lists."""
    files = []
    for folder in sorted(Path(root).glob(f"{DAY_PREFIX}*")):
        day = day_of(folder)
        if day is not None and (first is None or day >= first) and (last is None or day <= last):
            files += sorted(f for f in folder.glob("*.parquet") if not f.name.startswith((".", "_")))
    return files


def readable(files: list[Path], warn: Callable = log.warning) -> list[Path]:
    """The files whose Parquet footer reads and whose schema is the log's; each other one is named in a
    warning and left out (one damaged file is that file's problem, not the window's)."""
    kept = []
    for path in files:
        try:
            if pq.read_schema(path).equals(SCHEMA):
                kept.append(path)
                continue
            problem = "not the prediction log's schema"
        except (OSError, pa.ArrowException) as error:
            problem = str(error)
        warn(f"prediction log: {path} left out: {problem}")
    return kept


def read_table(files: list[Path], condition=None, columns: list[str] | None = None, warn: Callable = log.warning):
    """The rows of `files` matching `condition` (a pyarrow dataset expression); damaged files left out."""
    try:
        return ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table(columns, filter=condition)
    except (OSError, pa.ArrowException):  # a damaged file somewhere: find it, leave it out, read the others
        files = readable(files, warn)
        return ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table(columns, filter=condition)


def read_window(
    root: Path,
    since: datetime | None = None,
    last: int | None = None,
    until: datetime | None = None,
    warn: Callable = log.warning,
    probabilities: bool = True,
) -> LogWindow:
    """Logged rows with `since` < time ≤ `until` (either open), in time order, each prediction once; with
    `last`, only the `last` most recent of them. Only the day folders the bounds allow are opened; a
    damaged file is left out with a warning. `probabilities=False` leaves them unread ((N, 0)), so rows
    of models with different label sets read together. ValueError for a `last` below 1, a naive
    datetime, or (with probabilities) rows of different label sets."""
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{moment.isoformat()} has no time zone: give UTC times (…Z or +00:00)")
    if last is not None and last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    files = log_files(root, since and since.astimezone(UTC).date(), until and until.astimezone(UTC).date())
    if not files:
        return _window(SCHEMA.empty_table())
    time_type = SCHEMA.field("time").type
    condition = None
    if since is not None:
        condition = ds.field("time") > pa.scalar(since, time_type)
    if until is not None:
        upper = ds.field("time") <= pa.scalar(until, time_type)
        condition = upper if condition is None else condition & upper
    if last is not None:  # find the cut from ids and times alone, then read the pixels of the rows after it
        times = once_each(read_table(files, condition, ["prediction_id", "time"], warn))["time"]
        if len(times) > last:
            cut = pc.sort_indices(times, sort_keys=[("", "descending")])[last - 1]
            lower = ds.field("time") >= times[cut.as_py()]
            condition = lower if condition is None else condition & lower
    table = once_each(read_table(files, condition, window_columns(probabilities), warn))
    table = table.sort_by([("time", "ascending")])  # stable
    if last is not None and table.num_rows > last:
        table = table.slice(table.num_rows - last)
    return _window(table)


def read_files(
    files: list[Path], most: int | None = None, seed: int = 0, warn: Callable = log.warning, probabilities: bool = True
) -> tuple[LogWindow, np.ndarray]:
    """Every row of `files`, each prediction once, in time order, and (N,) datetime64[us] the times of all
    of them; with `most`, the window is a random sample (seeded by `seed`) of `most` of those rows, read
    from ids and times first so only the sample's pixels are loaded. `probabilities` as for `read_window`.
    Unreadable files are for the caller to leave out (`readable`)."""
    if not files:
        return _window(SCHEMA.empty_table()), np.zeros(0, "datetime64[us]")
    keys = once_each(read_table(files, columns=["prediction_id", "time"], warn=warn))
    times = keys["time"].to_numpy().astype("datetime64[us]")
    condition = None
    if most is not None and keys.num_rows > most:
        chosen = np.random.default_rng(seed).choice(keys.num_rows, most, replace=False)
        condition = ds.field("prediction_id").isin(keys["prediction_id"].take(pa.array(np.sort(chosen))))
    table = once_each(read_table(files, condition, window_columns(probabilities), warn))
    return _window(table.sort_by([("time", "ascending")])), np.sort(times)


def window_columns(probabilities: bool) -> list[str]:
    """The log's columns, less the probabilities unless asked for."""
    return [name for name in SCHEMA.names if probabilities or name != "probabilities"]


def once_each(table: pa.Table) -> pa.Table:
    """`table` with each prediction_id's first row only (a compaction cut short leaves two copies)."""
    ids = table["prediction_id"]
    if pc.count_distinct(ids).as_py() == len(ids):
        return table
    first = (
        pa.table({"id": ids, "row": np.arange(len(ids))}).group_by("id", use_threads=False).aggregate([("row", "min")])
    )
    return table.take(np.sort(first["row_min"].to_numpy()))


def _window(table: pa.Table) -> LogWindow:
    count = table.num_rows
    if "probabilities" not in table.column_names:  # not read: (N, 0)
        table = table.append_column("probabilities", pa.array([[]] * count, SCHEMA.field("probabilities").type))
    classes = pc.unique(pc.list_value_length(table["probabilities"])).to_pylist() if count else []
    if len(classes) > 1:
        raise ValueError(
            f"the window mixes models with {' and '.join(map(str, sorted(classes)))} classes: "
            "read a window that holds one label set, or the rows without probabilities (probabilities=False)"
        )
    column = table["pixels"].combine_chunks()
    pixels = (
        np.frombuffer(column.buffers()[1], np.uint8, count * PIXEL_BYTES, column.offset * PIXEL_BYTES) if count else []
    )
    probabilities = table["probabilities"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return LogWindow(
        ids=np.asarray(table["prediction_id"].to_pylist(), dtype=object),
        times=table["time"].to_numpy().astype("datetime64[us]") if count else np.zeros(0, "datetime64[us]"),
        sources=np.asarray(table["source"].to_pylist(), dtype=object),
        model_versions=np.asarray(table["model_version"].to_pylist(), dtype=object),
        probabilities=probabilities.astype(np.float32).reshape(count, classes[0] if classes else 0),
        pixels=np.asarray(pixels, np.uint8).reshape(count, *IMAGE_SHAPE),
    )


# --- retention ------------------------------------------------------------------------------------------


def delete_older(root: Path, keep_days: int, today: date | None = None) -> list[Path]:
    """Delete the day folders older than `keep_days` days before `today` (UTC); the folders deleted.
    keep_days = 30 keeps today and the 29 days before it. ValueError for keep_days < 1."""
    if keep_days < 1:
        raise ValueError(f"keep_days must be at least 1, got {keep_days}")
    oldest_kept = (today or datetime.now(UTC).date()) - timedelta(days=keep_days - 1)
    deleted = []
    for folder in sorted(Path(root).glob(f"{DAY_PREFIX}*")):
        day = day_of(folder)
        if day is not None and day < oldest_kept:  # not a folder the log wrote: leave it
            shutil.rmtree(folder)
            deleted.append(folder)
    return deleted


@contextlib.contextmanager
def merges_paused(root: Path) -> Iterator[None]:
    """While held, `compact_days` merges nothing (it skips, as for another merge), so the files a reader
    listed stay where they are; waits for a merge under way to finish. Readers may hold it together."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / COMPACT_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield  # closing the file releases the lock


def compact_days(
    root: Path, today: date | None = None, warn: Callable = log.warning, judged: Callable[[Path], bool] | None = None
) -> list[Path]:
    """Merge each finished day's files (the days before `today`, UTC) into one file, `day.parquet`, so a
    month of one-second flushes is 30 files, not millions; the day folders merged. With `judged`, only
    the files it accepts (and day.parquet) are merged: the monitor merges the files it has judged, so a
    day.parquet holds judged rows only and a file not judged yet keeps its name until it is.

    One merge at a time per log (a lock file; a second caller skips the merge). Files are streamed in
    record batches, each prediction kept once, so memory holds one batch and the day's ids, not the day.
    The merged file is written whole before the small ones go, so a kill in between leaves every row
    (twice, which readers and the next merge undo). A damaged file stays where it is, named in a
    warning; a file that fails while being merged stops that day's merge, leaving the day as it was."""
    today = today or datetime.now(UTC).date()
    merged = []
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / COMPACT_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return merged  # another monitor run is merging: it will do what this one would
        for folder in sorted(Path(root).glob(f"{DAY_PREFIX}*")):
            day = day_of(folder)
            files = readable(log_files(root, day, day), warn) if day is not None and day < today else []
            files = [f for f in files if f.name == COMPACTED or judged is None or judged(f)]
            if len(files) < 2:
                continue
            files.sort(key=lambda f: f.name != COMPACTED)  # the earlier merge holds the oldest rows
            try:
                merge_files(files, folder / COMPACTED)
            except (OSError, pa.ArrowException) as error:
                warn(f"prediction log: {folder.name} not merged ({error}); its files are as they were")
                continue
            for path in files:
                if path.name != COMPACTED:
                    path.unlink()
            merged.append(folder)
    return merged


def merge_files(files: list[Path], target: Path) -> None:
    """Write the rows of `files`, in order, each prediction_id once, into `target` (atomically)."""
    seen: set[str] = set()
    with atomic_path(target) as tmp, open(tmp, "wb") as sink, pq.ParquetWriter(sink, SCHEMA, compression="zstd") as out:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
                ids = batch.column("prediction_id").to_pylist()
                fresh = [i for i, prediction_id in enumerate(ids) if prediction_id not in seen]
                seen.update(ids)
                if fresh:
                    out.write_table(pa.Table.from_batches([batch], SCHEMA).take(fresh))
