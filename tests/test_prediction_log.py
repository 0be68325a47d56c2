"""The prediction log (`cifarflow.monitoring.log`): rows round-trip exactly, the background writer flushes
by row count, by time and on close, keeps rows through a failing disk, loses at most the last flush
interval to a `kill -9`, never shows a reader half a file; windows, retention and day partitions.
Tiny synthetic images, real files under `tmp_path`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cifarflow.data.shards import pixel_digest
from cifarflow.monitoring import log as log_module
from cifarflow.monitoring.log import (
    SCHEMA,
    PredictionLog,
    compact_days,
    delete_older,
    log_files,
    log_table,
    new_ids,
    read_window,
    write_log_file,
)
from tests.conftest import REPO_ROOT

CLASSES = 10
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def probabilities(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(CLASSES), count).astype(np.float32)


def wait_for(condition, timeout: float = 10.0) -> float:
    """Seconds until `condition()` held (polled every 5 ms); AssertionError after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout} s: {condition}")
        time.sleep(0.005)
    return time.monotonic() - start


def parquet_files(root) -> list:
    return sorted(root.glob("day=*/*.parquet"))


def write_calls(root, count_per_call: int, moments: list[datetime]) -> list[str]:
    """One log file per moment, `count_per_call` rows each; the ids in time order."""
    ids = []
    for number, moment in enumerate(moments):
        call_ids = [f"{number:02d}-{i}" for i in range(count_per_call)]
        table = log_table(
            call_ids, "batch", "v1", probabilities(count_per_call, number), images(count_per_call, number), moment
        )
        write_log_file(root, table, f"call-{number:03d}.parquet")
        ids += call_ids
    return ids


def test_new_ids_are_distinct_uuid4_hex():
    ids = new_ids(1000)
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i[12] == "4" for i in ids)  # version nibble 4


def test_log_table_refuses_an_unknown_source_and_disagreeing_shapes():
    with pytest.raises(ValueError, match="source"):
        log_table(["a"], "elsewhere", "v1", probabilities(1), images(1), T0)
    with pytest.raises(ValueError, match="ids"):
        log_table(["a", "b"], "service", "v1", probabilities(1), images(1), T0)
    with pytest.raises(ValueError, match="shape"):
        log_table(["a"], "service", "v1", probabilities(1), np.zeros((1, 32, 32), np.uint8), T0)


def test_rows_round_trip_exactly_in_the_order_of_each_call(tmp_path):
    first_pixels, second_pixels = images(5, seed=1), images(3, seed=2)
    first_probabilities, second_probabilities = probabilities(5, seed=1), probabilities(3, seed=2)
    first_ids, second_ids = new_ids(5), new_ids(3)
    before = datetime.now(UTC)
    with PredictionLog(tmp_path, flush_s=60, flush_rows=10_000) as prediction_log:
        prediction_log.append(first_ids, "service", "v7", first_probabilities, first_pixels)
        prediction_log.append(second_ids, "batch", "v8", second_probabilities, second_pixels)
    after = datetime.now(UTC)
    assert prediction_log.written == 8 and prediction_log.dropped == 0

    window = read_window(tmp_path)
    assert len(window) == 8
    assert list(window.ids) == first_ids + second_ids
    assert list(window.sources) == ["service"] * 5 + ["batch"] * 3
    assert list(window.model_versions) == ["v7"] * 5 + ["v8"] * 3
    assert window.pixels.dtype == np.uint8 and window.probabilities.dtype == np.float32
    np.testing.assert_array_equal(window.pixels, np.concatenate([first_pixels, second_pixels]))
    np.testing.assert_array_equal(window.probabilities, np.concatenate([first_probabilities, second_probabilities]))
    assert before <= window.start <= window.end <= after
    assert window.start.tzinfo is not None

    (path,) = parquet_files(tmp_path)  # one flush, one file, in today's UTC day folder
    assert path.parent.name == f"day={before:%Y-%m-%d}" or path.parent.name == f"day={after:%Y-%m-%d}"
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    assert table["pixel_sha256"].to_pylist() == [pixel_digest(image) for image in window.pixels]


def test_a_flush_happens_when_enough_rows_wait(tmp_path):
    with PredictionLog(tmp_path, flush_s=60, flush_rows=5) as prediction_log:
        prediction_log.append(new_ids(4), "service", "v1", probabilities(4), images(4))
        time.sleep(0.1)
        assert parquet_files(tmp_path) == []  # four rows wait for a fifth, or a minute
        prediction_log.append(new_ids(1), "service", "v1", probabilities(1), images(1))
        assert wait_for(lambda: parquet_files(tmp_path)) < 30  # long before flush_s
        assert len(read_window(tmp_path)) == 5


def test_a_flush_happens_when_the_interval_passes(tmp_path):
    with PredictionLog(tmp_path, flush_s=0.1, flush_rows=10_000) as prediction_log:
        start = time.monotonic()
        prediction_log.append(new_ids(1), "service", "v1", probabilities(1), images(1))
        wait_for(lambda: parquet_files(tmp_path))
        assert time.monotonic() - start >= 0.1  # one row is no reason to write before the interval
        assert len(read_window(tmp_path)) == 1
        prediction_log.append(new_ids(2), "service", "v1", probabilities(2), images(2))
        wait_for(lambda: len(parquet_files(tmp_path)) == 2)  # and again, without closing
    assert len(read_window(tmp_path)) == 3


def test_close_writes_what_waits_and_refuses_more(tmp_path):
    prediction_log = PredictionLog(tmp_path, flush_s=60, flush_rows=10_000).start()
    prediction_log.append(new_ids(3), "batch", "v1", probabilities(3), images(3))
    prediction_log.append([], "batch", "v1", probabilities(0), images(0))  # nothing to log: fine
    prediction_log.close()
    assert len(read_window(tmp_path)) == 3 and prediction_log.written == 3
    with pytest.raises(RuntimeError, match="closed"):
        prediction_log.append(new_ids(1), "batch", "v1", probabilities(1), images(1))
    prediction_log.close()  # twice is harmless


def test_bad_rows_are_dropped_with_a_warning_and_the_writer_goes_on(tmp_path):
    warnings: list[str] = []
    with PredictionLog(tmp_path, flush_s=60, flush_rows=10_000, warn=warnings.append) as prediction_log:
        prediction_log.append(new_ids(2), "service", "v1", probabilities(2), np.zeros((2, 8, 8, 3), np.uint8))
        prediction_log.append(new_ids(3), "service", "v1", probabilities(3), images(3))
    assert prediction_log.dropped == 2 and prediction_log.written == 3
    assert len(warnings) == 1 and "2 rows not logged" in warnings[0]
    assert len(read_window(tmp_path)) == 3


def test_eight_threads_appending_at_once_lose_and_repeat_nothing(tmp_path):
    appended: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)
    pixels, scores = images(1), probabilities(1)

    def client(number: int, prediction_log: PredictionLog) -> None:
        start.wait()
        for _ in range(50):
            ids = new_ids(1)
            prediction_log.append(ids, "service", "v1", scores, pixels)
            appended[number] += ids

    with PredictionLog(tmp_path, flush_s=0.05, flush_rows=50) as prediction_log:
        clients = [threading.Thread(target=client, args=(n, prediction_log)) for n in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    window = read_window(tmp_path)
    assert len(window) == 400 and len(set(window.ids)) == 400
    assert set(window.ids) == {i for ids in appended for i in ids}
    assert prediction_log.written == 400 and prediction_log.dropped == 0


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """Readers run while the writer flushes every few rows; leftovers of writes in progress (hidden
    `.part` files) and stray hidden files in a day folder are never read."""
    stop = threading.Event()

    def writer(prediction_log: PredictionLog) -> None:
        for number in range(60):
            prediction_log.append(new_ids(1), "service", "v1", probabilities(1, number), images(1, number))
            time.sleep(0.002)
        stop.set()

    seen, warnings = [0], []
    with PredictionLog(tmp_path, flush_s=0.01, flush_rows=3) as prediction_log:
        thread = threading.Thread(target=writer, args=(prediction_log,))
        thread.start()
        while not stop.is_set():
            rows = len(read_window(tmp_path, warn=warnings.append))  # every column of every file
            assert rows >= seen[-1]
            seen.append(rows)
        thread.join()
    assert len(read_window(tmp_path)) == 60 and warnings == []  # no file was ever torn, none left out
    for path in tmp_path.rglob("*"):  # the writer leaves complete Parquet files and their folders only
        assert path.is_dir() or (path.suffix == ".parquet" and not path.name.startswith(".")), path

    day = parquet_files(tmp_path)[0].parent
    (day / ".call.parquet.a1b2c3.part").write_bytes(b"PAR1 half a file")  # a write cut short
    (day / ".garbage").write_bytes(b"\x00not parquet")
    assert len(read_window(tmp_path)) == 60
    assert log_files(tmp_path) == parquet_files(tmp_path)


def test_a_write_cut_short_leaves_nothing_behind(tmp_path, monkeypatch):
    """Fault injection: the Parquet writer dies after a few bytes (a full disk). A reader must see no file
    at all, neither the torn one nor its temporary."""

    class TornWriter:
        @staticmethod
        def write_table(table, sink, **options):
            sink.write(b"PAR1 and then the disk filled")
            raise OSError(28, "No space left on device")

    table = log_table(["a"], "batch", "v1", probabilities(1), images(1), T0)
    monkeypatch.setattr(log_module, "pq", TornWriter)
    with pytest.raises(OSError, match="No space"):
        write_log_file(tmp_path, table, "call.parquet")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert len(read_window(tmp_path)) == 0
    monkeypatch.undo()
    write_log_file(tmp_path, table, "call.parquet")
    assert list(read_window(tmp_path).ids) == ["a"]


def test_hidden_files_are_never_read_whatever_their_suffix(tmp_path):
    """Hidden files are not the log's (the Hive/Spark convention pyarrow's own discovery follows): a
    macOS `._*.parquet` resource fork copied along with the folder must not break every read."""
    write_log_file(tmp_path, log_table(["a"], "batch", "v1", probabilities(1), images(1), T0), "call.parquet")
    (tmp_path / f"day={T0:%Y-%m-%d}" / "._call.parquet").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert list(read_window(tmp_path).ids) == ["a"]


def test_rows_a_failing_disk_still_holds_at_close_are_counted_as_dropped(tmp_path):
    """close() cannot try again later: rows it could not write are lost, so they must be counted in
    `dropped` (written + dropped = appended) and the warning must not promise another try."""
    root = tmp_path / "log"
    root.write_text("a file where the log's folder should be")
    warnings: list[str] = []
    with PredictionLog(root, flush_s=60, flush_rows=10_000, warn=warnings.append) as prediction_log:
        prediction_log.append(new_ids(3), "service", "v1", probabilities(3), images(3))
    assert prediction_log.written == 0
    assert prediction_log.dropped == 3
    assert warnings and "trying again" not in warnings[-1]


# A child process appends one row every 5 ms and reports how many it has appended; killed with
# SIGKILL, it may lose only the rows of its last flush interval (plus slack for a loaded machine).
CHILD = """
import sys, time
import numpy as np
from cifarflow.monitoring.log import PredictionLog
prediction_log = PredictionLog(sys.argv[1], flush_s=float(sys.argv[2]), flush_rows=1_000_000).start()
pixels, scores = np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 10), 0.1, np.float32)
appended = 0
while True:
    prediction_log.append([f"{appended:032x}"], "service", "v1", scores, pixels)
    appended += 1
    print(appended, flush=True)
    time.sleep(0.005)
"""
CHILD_FLUSH_S = 0.2
SLACK_S = 0.6  # the write itself and a busy scheduler
RUN_S = 1.2


@pytest.mark.flow  # a fresh process of the product: the flow tier, by conftest's rule
def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path):
    root = tmp_path / "log"
    with open(tmp_path / "stderr", "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(CHILD_FLUSH_S)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO_ROOT,
        )  # fmt: skip
    reports: list[tuple[float, int]] = []  # (when the parent read it, rows the child had appended by then)

    def read_reports() -> None:
        for line in child.stdout:
            reports.append((time.monotonic(), int(line)))

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    try:
        wait_for(lambda: reports or child.poll() is not None, timeout=60)
        assert reports, (tmp_path / "stderr").read_text()
        time.sleep(RUN_S)
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        reader.join(5)
        child.stdout.close()

    durable = [count for read_at, count in reports if read_at <= killed_at - CHILD_FLUSH_S - SLACK_S]
    assert durable and max(durable) > 0  # the run was long enough to say something
    for path in parquet_files(root):
        assert pq.read_table(path).num_rows > 0  # every file reads whole
    for path in root.rglob("*"):  # nothing else but a cut-short write's hidden temporary file
        assert path.is_dir() or path.suffix == ".parquet" or (path.name.startswith(".") and path.suffix == ".part")
    logged = list(read_window(root).ids)
    assert logged == [f"{i:032x}" for i in range(len(logged))]  # a prefix of what was appended, in order
    assert len(logged) >= max(durable)


def test_a_failing_disk_warns_keeps_the_rows_and_writes_them_when_it_recovers(tmp_path):
    root = tmp_path / "log"
    root.write_text("a file where the log's folder should be")
    warnings: list[str] = []
    with PredictionLog(root, flush_s=0.05, flush_rows=10_000, warn=warnings.append) as prediction_log:
        first = new_ids(3)
        prediction_log.append(first, "service", "v1", probabilities(3), images(3))
        wait_for(lambda: warnings)
        assert "3 rows not written yet" in warnings[0]
        second = new_ids(2)
        prediction_log.append(second, "service", "v1", probabilities(2), images(2))  # the writer is alive
        wait_for(lambda: any("5 rows" in w for w in warnings))
        assert prediction_log.written == 0
        root.unlink()
        wait_for(lambda: prediction_log.written == 5)
    assert list(read_window(root).ids) == first + second
    assert prediction_log.dropped == 0


def test_rows_beyond_the_pending_limit_are_dropped_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setattr(log_module, "MAX_PENDING_ROWS", 5)
    root = tmp_path / "log"
    root.write_text("blocks the folder")
    warnings: list[str] = []
    calls = [new_ids(3) for _ in range(4)]
    with PredictionLog(root, flush_s=0.02, flush_rows=10_000, warn=warnings.append) as prediction_log:
        for ids in calls:
            prediction_log.append(ids, "service", "v1", probabilities(3), images(3))
        wait_for(lambda: prediction_log.dropped == 9)  # 12 rows held to at most 5: the last call's 3
        root.unlink()
        wait_for(lambda: prediction_log.written == 3)
    assert list(read_window(root).ids) == calls[-1]
    assert sum("dropped 3 rows" in w for w in warnings) == 3


def test_read_window_since_is_exclusive_until_inclusive_and_last_keeps_the_newest(tmp_path):
    moments = [T0 + timedelta(minutes=m) for m in range(5)]
    ids = write_calls(tmp_path, 2, moments)  # two rows at each of five minutes
    assert list(read_window(tmp_path).ids) == ids
    assert list(read_window(tmp_path, since=moments[2]).ids) == ids[6:]
    assert list(read_window(tmp_path, until=moments[2]).ids) == ids[:6]
    assert list(read_window(tmp_path, since=moments[0], until=moments[3]).ids) == ids[2:8]
    assert list(read_window(tmp_path, last=3).ids) == ids[-3:]  # a call cut in two keeps its later row
    assert list(read_window(tmp_path, last=4, until=moments[3]).ids) == ids[4:8]
    assert list(read_window(tmp_path, last=100, since=moments[3]).ids) == ids[8:]
    window = read_window(tmp_path, last=1)
    assert window.start == window.end == moments[-1]
    assert window.pixels.shape == (1, 32, 32, 3) and window.probabilities.shape == (1, CLASSES)
    later = datetime(2026, 11, 30, 11, 3, tzinfo=timezone(timedelta(hours=1)))  # 10:03 UTC, in another zone
    assert list(read_window(tmp_path, since=later).ids) == ids[8:]


def test_read_window_refuses_naive_times_and_a_last_below_one(tmp_path):
    with pytest.raises(ValueError, match="time zone"):
        read_window(tmp_path, since=datetime(2026, 11, 30))
    with pytest.raises(ValueError, match="time zone"):
        read_window(tmp_path, until=datetime(2026, 11, 30))
    with pytest.raises(ValueError, match="last"):
        read_window(tmp_path, last=0)


@pytest.mark.parametrize("make_root", [lambda p: p / "never-made", lambda p: p])
def test_an_empty_or_missing_log_reads_as_an_empty_window(tmp_path, make_root):
    window = read_window(make_root(tmp_path), since=T0, last=5)
    assert len(window) == 0 and window.start is None and window.end is None
    assert window.pixels.shape == (0, 32, 32, 3) and window.pixels.dtype == np.uint8
    assert window.probabilities.shape[0] == 0 and window.ids.shape == window.times.shape == (0,)


def test_rows_either_side_of_midnight_utc_land_in_two_day_folders(tmp_path):
    before = datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    after = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    berlin_evening = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC on the 30th
    table = pa.concat_tables(
        [
            log_table(["a1", "a2"], "batch", "v1", probabilities(2, 1), images(2, 1), before),
            log_table(["b1"], "batch", "v1", probabilities(1, 2), images(1, 2), after),
            log_table(["c1"], "batch", "v1", probabilities(1, 3), images(1, 3), berlin_evening),
        ]
    )
    written = write_log_file(tmp_path, table, "call.parquet")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "day=2026-11-30/call.parquet",
        "day=2026-12-01/call.parquet",
    ]
    assert pq.read_table(tmp_path / "day=2026-11-30/call.parquet")["prediction_id"].to_pylist() == ["a1", "a2", "c1"]
    assert pq.read_table(tmp_path / "day=2026-12-01/call.parquet")["prediction_id"].to_pylist() == ["b1"]
    assert list(read_window(tmp_path).ids) == ["c1", "a1", "a2", "b1"]
    assert list(read_window(tmp_path, since=before).ids) == ["b1"]


def test_delete_older_removes_whole_days_past_the_kept_ones(tmp_path):
    today = date(2026, 11, 30)
    for offset in (-1, 0, 1, 29, 30, 45):  # -1: a day ahead (a clock running fast) is kept too
        folder = tmp_path / f"day={today - timedelta(days=offset):%Y-%m-%d}"
        folder.mkdir()
        (folder / "x.parquet").write_bytes(b"")
    for stranger in ("day=not-a-date", "notes"):
        (tmp_path / stranger).mkdir()
    deleted = delete_older(tmp_path, keep_days=30, today=today)
    assert sorted(p.name for p in deleted) == ["day=2026-10-16", "day=2026-10-31"]
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == [
        "day=2026-11-01",
        "day=2026-11-29",
        "day=2026-11-30",
        "day=2026-12-01",
        "day=not-a-date",
        "notes",
    ]
    assert [p.name for p in delete_older(tmp_path, keep_days=1, today=today)] == ["day=2026-11-01", "day=2026-11-29"]
    assert delete_older(tmp_path / "missing", keep_days=30, today=today) == []
    with pytest.raises(ValueError, match="keep_days"):
        delete_older(tmp_path, keep_days=0, today=today)


def test_a_damaged_file_is_left_out_naming_it_and_the_other_files_are_read(tmp_path):
    ids = write_calls(tmp_path, 3, [T0, T0 + timedelta(seconds=1)])
    day = tmp_path / f"day={T0:%Y-%m-%d}"
    (day / "torn.parquet").write_bytes(b"PAR1 cut short by a failing disk")
    pq.write_table(pa.table({"x": [1]}), day / "other.parquet")  # a file that is not the log's
    warnings: list[str] = []
    window = read_window(tmp_path, warn=warnings.append)
    assert list(window.ids) == ids
    assert len(warnings) == 2 and "torn.parquet left out" in warnings[1] and "other.parquet left out" in warnings[0]
    assert "not the prediction log's schema" in warnings[0]


def test_a_window_opens_only_the_days_its_bounds_span(tmp_path):
    ids = write_calls(tmp_path, 2, [T0 - timedelta(days=2), T0])
    (tmp_path / f"day={(T0 - timedelta(days=2)):%Y-%m-%d}" / "torn.parquet").write_bytes(b"never opened")
    warnings: list[str] = []
    window = read_window(tmp_path, since=T0 - timedelta(hours=1), warn=warnings.append)
    assert list(window.ids) == ids[2:] and warnings == []


def test_finished_days_are_merged_into_one_file_and_each_prediction_is_read_once(tmp_path):
    yesterday, today = T0 - timedelta(days=1), T0.date()
    ids = write_calls(tmp_path, 3, [yesterday + timedelta(seconds=s) for s in range(4)] + [T0])
    old_day = tmp_path / f"day={yesterday:%Y-%m-%d}"
    (old_day / "call-000-copy.parquet").write_bytes((old_day / "call-000.parquet").read_bytes())  # a cut-short merge
    assert len(read_window(tmp_path)) == len(ids)  # the copy's rows are read once
    assert compact_days(tmp_path, today) == [old_day]
    assert [p.name for p in old_day.iterdir()] == ["day.parquet"]
    assert len(parquet_files(tmp_path)) == 2  # today's file is left as it is: a writer may still add to the day
    assert list(read_window(tmp_path).ids) == ids
    assert compact_days(tmp_path, today) == []  # nothing more to merge


def test_last_counts_each_prediction_once_when_a_file_is_doubled(tmp_path):
    ids = write_calls(tmp_path, 2, [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)])
    day = tmp_path / f"day={T0:%Y-%m-%d}"
    (day / "call-002-copy.parquet").write_bytes((day / "call-002.parquet").read_bytes())
    assert list(read_window(tmp_path, last=4).ids) == ids[-4:]


def test_a_window_that_mixes_label_sets_is_refused_naming_them(tmp_path):
    write_log_file(tmp_path, log_table(["a"], "batch", "v1", probabilities(1), images(1), T0), "ten.parquet")
    thirty = np.full((1, 30), 1 / 30, np.float32)
    write_log_file(tmp_path, log_table(["b"], "batch", "v9", thirty, images(1), T0), "thirty.parquet")
    with pytest.raises(ValueError, match="mixes models with 10 and 30 classes"):
        read_window(tmp_path)
    window = read_window(tmp_path, probabilities=False)  # the monitor's read: it scores the pixels itself
    assert list(window.ids) == ["a", "b"] and window.probabilities.shape == (2, 0) and window.pixels.shape[0] == 2


def test_a_second_merge_while_one_runs_is_skipped_and_loses_nothing(tmp_path):
    import fcntl

    yesterday = T0 - timedelta(days=1)
    ids = write_calls(tmp_path, 2, [yesterday, yesterday + timedelta(seconds=1)])
    with open(tmp_path / ".compact.lock", "a+") as held:  # another monitor run is merging
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert compact_days(tmp_path, T0.date()) == []
    assert len(parquet_files(tmp_path)) == 2 and list(read_window(tmp_path).ids) == ids
    assert len(compact_days(tmp_path, T0.date())) == 1 and list(read_window(tmp_path).ids) == ids


def test_a_failing_disk_is_retried_at_the_interval_not_on_every_append(tmp_path):
    root = tmp_path / "log"
    root.write_text("a file where the log's folder should be")
    warnings: list[str] = []
    with PredictionLog(root, flush_s=0.5, flush_rows=2, warn=warnings.append) as prediction_log:
        for number in range(20):
            prediction_log.append(new_ids(1), "service", "v1", probabilities(1, number), images(1, number))
            time.sleep(0.005)
        time.sleep(0.1)
        tried = len(warnings)
    assert 1 <= tried <= 2  # one try when the rows first passed flush_rows, the next only at the interval


def test_rows_the_writer_holds_through_a_failing_disk_are_found_by_id(tmp_path):
    """A review of a prediction the service just returned must not 404 while the disk refuses writes: the
    writer's held rows are found by id until they are written."""
    root = tmp_path / "log"
    root.write_text("a file where the log's folder should be")
    ids = new_ids(3)
    with PredictionLog(root, flush_s=0.05, flush_rows=10_000, warn=lambda _: None) as prediction_log:
        prediction_log.append(ids, "service", "v1", probabilities(3), images(3))
        assert prediction_log.flush() is False  # the disk refuses the write: the rows are held
        held = prediction_log.held([ids[1], "not-logged"])
        assert held["prediction_id"].to_pylist() == [ids[1]]
        assert held["pixels"][0].as_py() == images(3)[1].tobytes()
        root.unlink()
        wait_for(lambda: prediction_log.written == 3)
        assert prediction_log.held(ids).num_rows == 0  # on disk now, found there


def test_a_merge_given_the_judged_files_leaves_the_others_as_they_are(tmp_path):
    yesterday = T0 - timedelta(days=1)
    ids = write_calls(tmp_path, 2, [yesterday + timedelta(seconds=s) for s in range(3)])
    day = tmp_path / f"day={yesterday:%Y-%m-%d}"
    judged = {"call-000.parquet", "call-001.parquet"}
    assert compact_days(tmp_path, T0.date(), judged=lambda path: path.name in judged) == [day]
    assert sorted(p.name for p in day.iterdir()) == ["call-002.parquet", "day.parquet"]
    assert pq.read_table(day / "day.parquet")["prediction_id"].to_pylist() == ids[:4]
    assert sorted(read_window(tmp_path).ids) == sorted(ids)
