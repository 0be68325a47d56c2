"""The prediction log (`cifarflow.monitoring.log`, SQLite in WAL mode): rows round-trip exactly; writer
processes at once interleave nothing; a SIGKILL loses at most the last second; a reader sees whole
transactions only; rows are held through a refused write; windows, retention; the landed main's files
are imported once. Real processes and files under `tmp_path`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cifarflow.data.shards import pixel_digest
from cifarflow.feedback.answers import AnswerBook
from cifarflow.layout import DataLayout
from cifarflow.monitoring import log as log_module
from cifarflow.monitoring.log import PredictionLog, connect, delete_older, new_ids, read_window, window_keys
from tests.conftest import REPO_ROOT

CLASSES = 10

pytestmark = pytest.mark.unit


def images(count: int, seed: int = 0, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def probabilities(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(CLASSES), count).astype(np.float32)


def wait_for(condition, timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not true after {timeout} s"
        time.sleep(0.005)


def test_rows_round_trip_exactly(tmp_path):
    db = tmp_path / "log.sqlite"
    first, second = new_ids(5), new_ids(3)
    with PredictionLog(db) as prediction_log:
        prediction_log.append(first, "service", "v7", probabilities(5, 1), images(5, 1))
        prediction_log.append(second, "batch", "v8", probabilities(3, 2), images(3, 2))
    assert prediction_log.written == 8 and prediction_log.dropped == 0
    window = read_window(db)
    assert [r.prediction_id for r in window] == first + second
    assert [r.source for r in window] == ["service"] * 5 + ["batch"] * 3
    assert [r.model_version for r in window] == ["v7"] * 5 + ["v8"] * 3
    assert np.array_equal([r.pixels for r in window], np.concatenate([images(5, 1), images(3, 2)]))
    assert np.array_equal([r.probabilities for r in window], np.concatenate([probabilities(5, 1), probabilities(3, 2)]))
    digests = sqlite3.connect(db).execute("SELECT pixel_sha256 FROM predictions ORDER BY seq").fetchall()
    assert [d for (d,) in digests] == [pixel_digest(r.pixels) for r in window]


def test_images_of_any_size_and_class_count_round_trip_side_by_side(tmp_path):
    """Two data sets' models logging to one database: each row's pixels come back at the size they were scored at."""
    db, small, large = tmp_path / "log.sqlite", new_ids(2), new_ids(3)
    with PredictionLog(db) as prediction_log:
        prediction_log.append(small, "service", "v1", probabilities(2)[:, :3], images(2, 1, side=16))
        prediction_log.append(large, "batch", "v2", probabilities(3), images(3, 2, side=48))
    window = {row.prediction_id: row for row in read_window(db)}
    assert np.array_equal([window[i].pixels for i in small], images(2, 1, side=16))
    assert np.array_equal([window[i].pixels for i in large], images(3, 2, side=48))
    assert [len(window[i].probabilities) for i in small + large] == [3, 3, 10, 10, 10]
    with pytest.raises(ValueError, match="400 bytes is not a square RGB image"):
        log_module.image_of(bytes(400))


def test_bad_rows_are_dropped_and_named_and_a_closed_log_refuses_more(tmp_path):
    warnings = []
    with PredictionLog(tmp_path / "log.sqlite", warn=warnings.append) as prediction_log:
        prediction_log.append(new_ids(2), "service", "v1", probabilities(2), np.zeros((2, 8, 6, 3), np.uint8))
        prediction_log.append(new_ids(3), "service", "v1", probabilities(3), images(3))
        prediction_log.append([], "service", "v1", probabilities(0), images(0))  # nothing to log: fine
    assert prediction_log.dropped == 2 and prediction_log.written == 3 and "2 rows not logged" in warnings[0]
    with pytest.raises(RuntimeError, match="closed"):
        prediction_log.append(new_ids(1), "batch", "v1", probabilities(1), images(1))
    prediction_log.close()  # twice is harmless


WRITER = """
import sys, time, numpy as np
from cifarflow.monitoring.log import PredictionLog
name, rows, pause = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with PredictionLog(sys.argv[1]) as log:
    for n in range(rows):
        count = 1 + n % 3  # calls of 1 to 3 rows, each row's pixels and probabilities made from its id
        ids = [f"{name}{n:06d}{i:02d}".ljust(32, "0") for i in range(count)]
        seeds = [int(id_[:30], 16) % 2**32 for id_ in ids]
        pixels = np.stack([np.random.default_rng(s).integers(0, 256, (32, 32, 3), dtype=np.uint8) for s in seeds])
        log.append(ids, "service", name, np.full((count, 10), 0.1, np.float32), pixels)
        print(n, flush=True)
        time.sleep(pause)
"""


def test_writer_processes_at_once_interleave_nothing_and_lose_nothing(tmp_path):
    db = tmp_path / "log.sqlite"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), name, "150", "0"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL
        )
        for name in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    window = read_window(db)
    assert len(window) == 2 * sum(1 + n % 3 for n in range(150)) == len({r.prediction_id for r in window})
    for id_, version, pixels in ((r.prediction_id, r.model_version, r.pixels) for r in window):
        seed = int(id_[:30], 16) % 2**32
        assert id_.startswith(version) and np.array_equal(
            pixels, np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        )


def test_a_sigkill_loses_at_most_the_last_second(tmp_path):
    """A writer killed mid-stream keeps every call appended more than 1 s before the kill, and nothing torn."""
    db = tmp_path / "log.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "c", "100000", "0.005"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    appended: list[tuple[float, int]] = []
    reader = threading.Thread(target=lambda: [appended.append((time.monotonic(), int(line))) for line in writer.stdout])
    reader.start()
    wait_for(lambda: len(appended) > 300, 60)
    os.kill(writer.pid, signal.SIGKILL)
    killed = time.monotonic()
    writer.wait()
    reader.join()
    calls = {int(r.prediction_id[1:7]) for r in read_window(db)}
    safe = max(n for at, n in appended if at < killed - 1.0)
    assert calls == set(range(len(calls))) and len(calls) > safe  # a prefix of the calls, all before the last second


def test_a_reader_during_writes_sees_whole_calls_only(tmp_path):
    db = tmp_path / "log.sqlite"
    done = threading.Event()

    def write() -> None:
        with PredictionLog(db) as prediction_log:
            for number in range(200):
                pixels = np.full((3, 32, 32, 3), number % 256, np.uint8)
                prediction_log.append(new_ids(3), "service", "v1", np.full((3, 10), 0.1, np.float32), pixels)
        done.set()

    threading.Thread(target=write).start()
    reads = 0
    while not done.is_set() or reads == 0:
        window = read_window(db)
        reads += 1
        assert len(window) % 3 == 0  # a call is never seen in part
        values = np.asarray([r.pixels for r in window], np.uint8).reshape(len(window), 3072)
        assert (values == values[:, :1]).all() and (np.bincount(values[:, 0]) % 3 == 0).all()  # rows whole
    assert len(read_window(db)) == 600 and reads > 1


def test_rows_the_database_refuses_are_held_findable_and_written_once_it_takes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(log_module, "FLUSH_S", 0.05)
    db = tmp_path / "log.sqlite"
    connect(db).execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON predictions BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    warnings, ids = [], new_ids(3)
    with PredictionLog(db, warn=warnings.append) as prediction_log:
        prediction_log.append(ids, "service", "v1", probabilities(3), images(3))
        assert prediction_log.flush() is False and prediction_log.written == 0  # at once, not after a timeout
        held = prediction_log.held([ids[1], "not-logged"])
        assert list(held) == [ids[1]] and np.array_equal(held[ids[1]].pixels, images(3)[1])
        assert "3 rows not written yet (database or disk is full); trying again" in warnings[0]
        sqlite3.connect(db).execute("DROP TRIGGER refuse")
        wait_for(lambda: prediction_log.written == 3)
        assert prediction_log.held(ids) == {}
    assert [r.prediction_id for r in read_window(db)] == ids and prediction_log.dropped == 0


def test_rows_held_past_the_bound_drop_the_oldest_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(log_module, "MAX_HELD_ROWS", 4)
    db = tmp_path / "log.sqlite"
    connect(db).execute("CREATE TRIGGER refuse BEFORE INSERT ON predictions BEGIN SELECT RAISE(ABORT, 'full'); END")
    warnings = []
    prediction_log = PredictionLog(db, warn=warnings.append).start()
    calls = [new_ids(3) for _ in range(3)]
    for ids in calls:
        prediction_log.append(ids, "service", "v1", probabilities(3), images(3))
        prediction_log.flush()
    prediction_log.close()
    assert prediction_log.dropped == 9 and any("dropped" in w for w in warnings)
    assert any("closed with 4 rows it could not write" in w for w in warnings)


def test_window_keys_bound_by_seq_and_time_and_refuse_naive_times(tmp_path):
    db = tmp_path / "log.sqlite"
    rows = [
        log_module.log_rows([id_], "batch", "v1", probabilities(1), images(1), at)
        for id_, at in zip(new_ids(4), (30, 10, 20, 40))
    ]
    with log_module.transaction(connect(db)) as writing:
        for row in rows:
            writing.executemany(log_module.INSERT, row)
    seqs, times = window_keys(db)
    assert list(seqs) == [2, 3, 1, 4] and list(times.astype(np.int64)) == [10, 20, 30, 40]  # time order
    assert list(window_keys(db, after_seq=1, upto_seq=3)[0]) == [2, 3]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert list(
        window_keys(db, since=epoch + timedelta(microseconds=10), until=epoch + timedelta(microseconds=30))[0]
    ) == [3, 1]
    with pytest.raises(ValueError, match="no time zone"):
        window_keys(db, since=datetime(2026, 11, 30))


def test_retention_deletes_only_judged_rows_older_than_keep_days(tmp_path):
    db = tmp_path / "log.sqlite"
    now = datetime.now(UTC)
    ages = (40, 40, 1, 40)  # days; rows 1 and 2 judged
    with log_module.transaction(connect(db)) as writing:
        for id_, age in zip(new_ids(4), ages):
            at = log_module.micros(now - timedelta(days=age))
            writing.executemany(
                log_module.INSERT, log_module.log_rows([id_], "batch", "v1", probabilities(1), images(1), at)
            )
    assert delete_older(db, 30, judged_seq=3, now=now) == 2
    assert sorted(window_keys(db)[0]) == [3, 4]  # the young one, and the old one not judged yet
    with pytest.raises(ValueError, match="at least 1"):
        delete_older(db, 0, 3, now)


LANDED_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),
        ("model_version", pa.string()),
        ("probabilities", pa.list_(pa.float32())),
        ("pixels", pa.binary(3072)),
        ("pixel_sha256", pa.string()),
    ]
)


def landed_file(path, ids, at):
    pixels = images(len(ids), len(path.name))
    pq.write_table(
        pa.table(
            {
                "prediction_id": ids,
                "time": [at] * len(ids),
                "source": ["service"] * len(ids),
                "model_version": ["v1"] * len(ids),
                "probabilities": probabilities(len(ids)).tolist(),
                "pixels": [image.tobytes() for image in pixels],
                "pixel_sha256": [pixel_digest(image) for image in pixels],
            },
            schema=LANDED_SCHEMA,
        ),
        path,
    )


def test_a_data_dir_of_the_landed_main_is_imported_once_and_its_files_renamed_aside(tmp_path):
    """Parquet day files (a merged day.parquet, a judged file, one not judged), answers.jsonl with a line cut
    short, the state naming judged files: every row and answer lands once, judged rows before the bookmark."""
    layout = DataLayout(tmp_path / "data")
    old_log, old_answers = layout.monitoring / "log", layout.feedback / "answers.jsonl"
    day = old_log / "day=2026-11-30"
    day.mkdir(parents=True)
    merged, judged, fresh = new_ids(3), new_ids(2), new_ids(2)
    at = datetime(2026, 11, 30, 10, tzinfo=UTC)
    landed_file(day / "day.parquet", merged, at)
    landed_file(day / "a.parquet", fresh, at - timedelta(hours=1))  # not judged: after the bookmark
    landed_file(day / "b.parquet", judged, at + timedelta(hours=1))
    layout.monitor_state.write_text(
        json.dumps({"judged": ["day=2026-11-30/b.parquet"], "newest": at.isoformat(), "run": None})
    )
    answer = {
        "answer_id": "1" * 32,
        "prediction_id": merged[0],
        "label": "cat",
        "predicted": "dog",
        "model_version": "v1",
        "reviewer": "ann",
        "time": "2026-11-30T10:00:00Z",
    }
    old_answers.parent.mkdir(parents=True)
    old_answers.write_text(json.dumps(answer) + "\n" + '{"answer_id": "cut sh')
    book = AnswerBook(layout.prediction_log)
    assert list(book.refresh()) == [merged[0]]
    window = read_window(layout.prediction_log)
    assert sorted(r.prediction_id for r in window) == sorted(merged + judged + fresh) and len(window) == 7
    state = json.loads(layout.monitor_state.read_text())
    judged_rows = sqlite3.connect(layout.prediction_log).execute(
        "SELECT prediction_id FROM predictions WHERE seq <= ?", (state["seq"],)
    )
    assert {row[0] for row in judged_rows} == set(merged + judged)  # the rows the landed main judged
    assert not old_log.exists() and (layout.monitoring / "log.imported").is_dir()
    assert not old_answers.exists() and (layout.feedback / "answers.jsonl.imported").is_file()
    assert len(read_window(layout.prediction_log)) == 7 and len(book.refresh()) == 1  # once
