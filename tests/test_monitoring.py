"""Watching the champion at work, end to end: the service (a real uvicorn process) and the predict flow
append what they score to the prediction log, and the monitor flow compares a window of it with the
champion's reference (the ingested test set), writes its report and says whether it drifted.

The data dir holds the two-version registry (tiny random `classic` networks) and the synthetic archive's
test split (100 images) as the reference; the flows run in-process on the session's Prefect server."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import pixel_digest, read_split
from cifarflow.journal import KILL_AT
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import INSERT, connect, log_rows, micros, new_ids, read_window, transaction
from flows.monitor_flow import main as monitor_main
from flows.predict_flow import main as predict_main
from tests.conftest import REPO_ROOT
from tests.registry_helpers import copy_data_dir
from tests.serving_helpers import serving_process, wait_until
from tests.synthetic import write_archive

pytestmark = pytest.mark.server  # starts real uvicorn processes

CLIENTS, REQUESTS = 8, 500  # the check: 8 clients × 500 single-image requests → 4,000 rows, 4,000 ids


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data_dir(two_versions, tmp_path_factory) -> Path:
    """The registry (v2 champion) and an ingested synthetic test split: the monitor's reference."""
    root = tmp_path_factory.mktemp("monitoring")
    data = copy_data_dir(two_versions, root / "data")
    archive = write_archive(root / "source" / "cifar-10-python.tar.gz")
    ingest_source(PipelineConfig(source=str(archive), data_dir=data, rows_per_shard=100))
    return data


@pytest.fixture(scope="module")
def test_images(data_dir) -> np.ndarray:
    return read_split(DataLayout(data_dir).shard_manifest, "test")[0]


def private_copy(data_dir: Path, tmp_path: Path) -> DataLayout:
    """The module's data dir for one test: the registry and the test split, no log, no monitor state."""
    layout = DataLayout(copy_data_dir(data_dir, tmp_path / "data"))
    shutil.rmtree(layout.monitoring, ignore_errors=True)
    shutil.rmtree(layout.prediction_log.parent, ignore_errors=True)
    return layout


def log_earlier(
    layout: DataLayout,
    images: np.ndarray,
    source: str = "service",
    ago: timedelta = timedelta(minutes=1),
    classes: int = 10,
    version: str = "v2",
) -> list[str]:
    """Rows scored `ago` before now, committed now in one transaction as a writer would; their ids."""
    ids = new_ids(len(images))
    scores = np.full((len(images), classes), 1 / classes)
    with transaction(connect(layout.prediction_log)) as db:
        db.executemany(INSERT, log_rows(ids, source, version, scores, images, micros(datetime.now(UTC) - ago)))
    return ids


def judged(layout: DataLayout) -> int:
    """The last seq the state counts as judged."""
    return json.loads(layout.monitor_state.read_text())["seq"]


def run_monitor(capsys, *args) -> tuple[int, list[str], dict | None]:
    code = monitor_main([str(a) for a in args])
    lines = capsys.readouterr().out.strip().splitlines()
    report = Path(lines[-1].removeprefix("done: monitoring report at ")) / "monitor.json"
    return code, lines, json.loads(report.read_text()) if report.is_file() else None


def test_the_service_logs_every_answer_and_the_monitor_finds_the_drift(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    data_dir = layout.root
    dark = [png(image // 2) for image in test_images[:50]]  # brightness halved: a shift the input signal sees

    with serving_process(data_dir, tmp_path / "serving.log") as server:

        def client(number: int) -> list[str]:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                answers = [
                    http.post("/predict", files={"file": ("x.png", dark[(number + i) % len(dark)], "image/png")})
                    for i in range(REQUESTS)
                ]
            assert {answer.status_code for answer in answers} == {200}
            return [answer.json()["prediction_id"] for answer in answers]

        with ThreadPoolExecutor(CLIENTS) as pool:
            returned = [i for ids in pool.map(client, range(CLIENTS)) for i in ids]
    # the service stopped (SIGTERM): its writer flushed what waited

    window = read_window(layout.prediction_log)
    ids = {row.prediction_id for row in window}
    assert len(window) == CLIENTS * REQUESTS == len(ids) == len(set(returned)) and ids == set(returned)
    assert {row.source for row in window} == {"service"} and {row.model_version for row in window} == {"v2"}
    darkened = {pixel_digest(image // 2) for image in test_images[:50]}
    assert {pixel_digest(row.pixels) for row in window} == darkened  # the pixels the model saw

    code, lines, summary = run_monitor(capsys, "--data-dir", data_dir)
    assert code == 0 and lines[-1].startswith("done: monitoring report at ")
    assert summary["images"] == CLIENTS * REQUESTS and summary["model_version"] == "v2"
    assert summary["drift"] is True and "input" in summary["fired"]
    assert set(summary["signals"]) == {"input", "embedding", "prediction", "confidence"}
    assert summary["signals"]["input"]["statistic"] > summary["signals"]["input"]["threshold"]
    assert summary["window"]["sources"] == {"service": CLIENTS * REQUESTS}
    report = Path(summary["report"])
    assert {"report.md", "class_mix.png", "confidence.png", "channels.png"} <= {p.name for p in report.iterdir()}
    assert "**drift: " in (report / "report.md").read_text()

    # the next run starts where this window ended: nothing new, no verdict, still done
    code, lines, summary = run_monitor(capsys, "--data-dir", data_dir)
    assert code == 0 and summary["images"] == 0 and summary["drift"] is None
    assert "no verdict: 0 images" in lines[-2]


def test_a_window_like_the_reference_raises_no_alarm(prefect_server, data_dir, capsys, tmp_path):
    layout = private_copy(data_dir, tmp_path)
    training, _ = read_split(layout.shard_manifest, "train")  # other images from the test set's generator
    log_earlier(layout, training[:200], "batch")
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root, "--since", "2000-01-01T00:00:00")
    assert code == 0 and summary["images"] == 200
    assert summary["drift"] is False and summary["fired"] == [] and summary["verdict"] == "no drift"
    assert all(signal["p_value"] > 0.05 / 4 for name, signal in summary["signals"].items() if name != "input")


def test_a_quiet_service_is_judged_once_enough_images_came(prefect_server, data_dir, test_images, capsys, tmp_path):
    """A window under 100 images keeps the pointer where it was: the next run sees those images again."""
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images[:60])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 60 and summary["drift"] is None
    assert judged(layout) == 0
    log_earlier(layout, test_images[60:])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None
    assert judged(layout) == 100 and summary["window"]["rows"] == 100
    # a damaged state file and a damaged reference are named, not fatal: the latest report says what was
    # judged, so nothing is judged twice
    layout.monitor_state.write_text("{not json")
    (reference,) = layout.monitor_references.glob("*/reference.npz")
    reference.write_bytes(reference.read_bytes()[:100])
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 0 and summary["drift"] is None
    assert any(f"{layout.monitor_state} cannot be read" in line for line in lines), lines
    assert summary["notes"] and "count as judged" in summary["notes"][0]
    assert judged(layout) == 100  # written anew, whole
    assert len(np.load(reference)["features"]) == 100  # scored again, whole


def test_the_predict_flow_logs_what_it_scores_unless_told_not_to(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for number, image in enumerate(test_images[:4]):
        Image.fromarray(image).save(folder / f"{number}.png")
    (folder / "broken.png").write_bytes(b"not an image")

    out = tmp_path / "scored.parquet"
    assert predict_main([str(folder), "--data-dir", str(layout.root), "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    window = read_window(layout.prediction_log)
    assert sorted(r.prediction_id for r in window) == sorted(row["prediction_id"] for row in rows if not row["error"])
    assert len(window) == 4 and {r.source for r in window} == {"batch"}
    assert next(row for row in rows if row["error"])["prediction_id"] is None

    assert predict_main([str(folder), "--data-dir", str(layout.root), "--out", str(out), "--no-log"]) == 0
    assert len(read_window(layout.prediction_log)) == 4
    capsys.readouterr()


def test_a_small_window_gets_no_verdict_and_only_judged_old_rows_are_deleted(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    old = log_earlier(layout, test_images, ago=timedelta(days=40))
    assert (
        run_monitor(capsys, "--data-dir", layout.root, "--keep-days", "30")[2]["images"] == 100
    )  # judged, then deleted
    late = log_earlier(layout, test_images[:60], ago=timedelta(days=40))  # old, not judged yet: kept
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root, "--last", "1000", "--keep-days", "30")
    assert code == 0 and summary["images"] == 60 and summary["drift"] is None and summary["signals"] == {}
    assert "no verdict: 60 images in the window, fewer than 100" in lines[-2]
    assert {r.prediction_id for r in read_window(layout.prediction_log)} == set(late) and not set(old) & set(late)


def test_the_service_keeps_no_log_with_no_log(data_dir, test_images, tmp_path):
    data = private_copy(data_dir, tmp_path).root
    with serving_process(data, tmp_path / "serving.log", options=["--no-log"]) as server:
        answer = httpx.post(f"{server.url}/predict", files={"file": ("x.png", png(test_images[0]), "image/png")})
        assert answer.status_code == 200 and len(answer.json()["prediction_id"]) == 32
    assert not DataLayout(data).prediction_log.exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--last", "0"], "--last must be at least 1"),
        (["--keep-days", "0"], "--keep-days must be at least 1"),
        (["--since", "yesterday"], "is not an ISO 8601 time"),
    ],
)
def test_unusable_arguments_exit_2_before_any_work(data_dir, capsys, arguments, message):
    assert monitor_main(["--data-dir", str(data_dir), *arguments]) == 2
    assert message in capsys.readouterr().out.strip().splitlines()[-1]


def test_a_future_since_and_a_data_dir_without_test_set_exit_2(data_dir, tmp_path, capsys):
    assert monitor_main(["--data-dir", str(data_dir), "--since", "2999-01-01T00:00:00Z"]) == 2
    assert "is in the future" in capsys.readouterr().out.strip().splitlines()[-1]
    layout = private_copy(data_dir, tmp_path)
    shutil.rmtree(layout.parquet)
    assert monitor_main(["--data-dir", str(layout.root)]) == 2
    assert "no test set in" in capsys.readouterr().out.strip().splitlines()[-1]


def test_a_service_whose_log_folder_cannot_be_written_serves_without_a_log(tmp_path, caplog):
    from serving.app import start_prediction_log

    (tmp_path / "data").write_text("a file where the data dir should be")
    assert start_prediction_log(tmp_path / "data" / "log" / "predictions.sqlite") is None
    assert "the prediction log is off" in caplog.text


def test_no_champion_exits_2_saying_so(tmp_path, capsys):
    assert monitor_main(["--data-dir", str(tmp_path / "empty")]) == 2
    assert "no champion" in capsys.readouterr().out.strip().splitlines()[-1]


# --- every logged row judged by exactly one incremental run (issue 28, item 1) --------------------------


def test_rows_that_reach_the_log_out_of_clock_order_are_judged_by_the_next_run_and_called_late(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images)
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None and summary["notes"] == []
    log_earlier(layout, test_images, ago=timedelta(hours=1))  # scored an hour before what was judged
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None
    (note,) = summary["notes"]
    assert note.startswith("100 rows arrived late, scored up to 0:5") and note.endswith("judged now")  # ~59 min
    assert f"note: {note}" in lines and "late" in (Path(summary["report"]) / "report.md").read_text()
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert summary["images"] == 0 and "no verdict: 0 images" in lines[-2]  # nothing judged twice


def test_a_window_over_max_images_is_judged_on_a_sample_and_all_its_rows_count(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, np.concatenate([test_images, test_images]), ago=timedelta(minutes=3))
    log_earlier(layout, test_images[:50])
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root, "--max-images", "120")
    assert code == 0 and summary["images"] == 120 and summary["drift"] is not None
    assert summary["window"]["rows"] == 250 and sum(summary["window"]["sources"].values()) == 120
    assert summary["window"]["first"] < summary["window"]["last_logged"]  # the oldest rows are in the window
    assert any("250 rows in the window: a random sample of 120 was judged" in note for note in summary["notes"])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert summary["images"] == 0 and judged(layout) == 250  # the 130 not in the sample are not judged again


def test_a_window_served_by_models_with_two_label_sets_is_judged_not_stuck(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    """Rows served by a 10-class and an 11-class champion in one window: the monitor scores the pixels
    with today's champion, so it judges all of them once. Before: every run failed ("the window mixes
    models with 10 and 11 classes"), the files stayed unjudged and the incremental monitor was stuck."""
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images)
    log_earlier(layout, test_images, ago=timedelta(seconds=30), classes=11, version="v9")
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 200 and summary["drift"] is not None, lines
    assert summary["window"]["model_versions"] == {"v2": 100, "v9": 100}
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root, "--last", "150")  # a look reads too
    assert code == 0 and summary["images"] == 150, lines
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert summary["images"] == 0 and judged(layout) == 200


def test_rows_at_another_image_size_are_reported_and_left_out_never_a_crash(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    """Rows a 16×16 model of another data set logged beside the champion's 32×32 ones: the window is judged on the
    champion's size, the others are named in a note and count as judged; a data dir of another data set than the
    champion's is refused before any work (its test set cannot be the reference)."""
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images)
    log_earlier(layout, test_images[:40, ::2, ::2], ago=timedelta(seconds=30), classes=3, version="v9")
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None, lines
    assert any(note.startswith("40 rows at another image size (16×16 px)") for note in summary["notes"])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert summary["images"] == 0 and judged(layout) == 140
    manifest = json.loads(layout.shard_manifest.read_text())
    layout.shard_manifest.write_text(json.dumps(manifest | {"label_names": ["kettle", "lantern", "anvil"]}))
    assert monitor_main(["--data-dir", str(layout.root)]) == 2
    assert "holds 3 classes (kettle, lantern, anvil) at 32×32" in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("point", "outcome"),
    [
        ("monitor:report-written", "finished"),  # report whole, commit and drift event not yet
        ("monitor:report-half-written", "undone"),  # plots and report.md written, monitor.json not
    ],
)
def test_a_monitor_run_killed_mid_way_is_finished_or_undone_by_the_next(
    prefect_server, cli_env, data_dir, test_images, capsys, tmp_path, point, outcome
):
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images[:50] // 2)  # darkened: drift
    log_earlier(layout, test_images[50:] // 2)
    killed = subprocess.run(
        [sys.executable, "flows/monitor_flow.py", "--data-dir", str(layout.root)],
        cwd=REPO_ROOT, env=cli_env | {KILL_AT: point}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    (folder,) = layout.monitor_reports.iterdir()

    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0, lines
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 1 and notes == [f"note: {n}" for n in summary["notes"]], lines
    if outcome == "finished":
        assert f"the monitor run killed after its report ({folder.name}: drift" in notes[0]
        assert "its rows up to seq 100 are now judged; its drift event, never sent, was emitted now" in notes[0]
        assert summary["images"] == 0 and (folder / "monitor.json").is_file()
    else:
        assert f"undone: its partial report {folder.name} was removed, its rows are judged by this run" in notes[0]
        assert not folder.exists() and summary["images"] == 100 and summary["drift"] is True
    assert judged(layout) == 100 and not layout.monitor_journal.exists()
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert summary["images"] == 0 and summary["notes"] == []  # nothing left to finish, nothing judged twice


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its file system refuses more; the file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as sink:
        try:
            while sink.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A mount point with a 4 MiB tmpfs on it (root only): a disk that fills."""
    mounts: list[Path] = []

    def mount(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (a full disk needs one): {made.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_rows_held_through_a_full_disk_are_judged_once_and_answerable_meanwhile(
    prefect_server, data_dir, test_images, capsys, tmp_path, small_disk
):
    """The real service with its log on a disk that fills: rows scored after the disk filled are held by
    the writer; a run meanwhile judges what reached the log; a review answer for a held row is taken (not
    404); once space is back the held rows land, stamped when scored, and the next run judges them."""
    layout = private_copy(data_dir, tmp_path)
    log_disk = small_disk(layout.prediction_log.parent)
    batch = [("file", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(test_images[:50])]

    def predict(http: httpx.Client, requests: int) -> list[str]:
        answers = [http.post("/predict/batch", files=batch) for _ in range(requests)]
        assert {a.status_code for a in answers} == {200}, answers[-1].text
        return [row["prediction_id"] for a in answers for row in a.json()]

    with serving_process(layout.root, tmp_path / "serving.log") as server, httpx.Client(base_url=server.url) as http:
        before = predict(http, 2)  # 100 rows, on disk within a second
        wait_until(lambda: len(read_window(layout.prediction_log)) == 100, 30, what="the first rows on disk")
        filler = fill(log_disk)
        during = predict(http, 2)  # 100 rows the writer holds: the disk refuses them
        wait_until(lambda: "rows not written yet" in server.log_tail(), 30, what="the writer's warning")

        refused = http.post("/feedback", json={"prediction_id": during[0], "label": "cat"})  # found, not a 404
        assert refused.status_code == 503 and "could not be stored" in refused.json()["error"], refused.text
        image = http.get(f"/review/image/{during[1]}.png")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"

        code, _, first = run_monitor(capsys, "--data-dir", layout.root)  # during the outage
        assert code == 0 and first["images"] == 100 and first["drift"] is not None
        filler.unlink()  # space again: the writer writes what it held, and the answer is taken
        answer = http.post("/feedback", json={"prediction_id": during[0], "label": "cat"})
        assert answer.status_code == 200 and answer.json()["status"] == "recorded", answer.text
        wait_until(lambda: len(read_window(layout.prediction_log)) == 200, 30, what="the held rows on disk")
    assert {r.prediction_id for r in read_window(layout.prediction_log)} == set(before) | set(during)

    code, lines, second = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and second["images"] == 100 and second["drift"] is not None, lines
    assert first["window"]["last_logged"] < second["window"]["first"]
    code, _, third = run_monitor(capsys, "--data-dir", layout.root)
    assert third["images"] == 0  # each of the 200 rows judged by exactly one run
