"""Watching the champion at work, end to end: the service (a real uvicorn process) and the predict flow
append what they score to the prediction log, and the monitor flow compares a window of it with the
champion's reference (the ingested test set), writes its report and says whether it drifted.

The data dir holds the two-version registry (tiny random `seed` networks) and the synthetic archive's
test split (100 images) as the reference; the flows run in-process on the session's Prefect server."""

from __future__ import annotations

import io
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.data.ingest import ingest_archive
from cifarflow.data.shards import pixel_digest, read_split
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import log_table, new_ids, read_window, write_log_file
from cifarflow.monitoring.monitor import SETTLE_S
from flows.monitor_flow import main as monitor_main
from flows.predict_flow import main as predict_main
from tests.registry_helpers import copy_data_dir
from tests.serving_helpers import serving_process
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
    ingest_archive(str(write_archive(root / "source" / "cifar-10-python.tar.gz")), DataLayout(data), rows_per_shard=100)
    return data


@pytest.fixture(scope="module")
def test_images(data_dir) -> np.ndarray:
    return read_split(DataLayout(data_dir).shard_manifest, "test")[0]


def private_copy(data_dir: Path, tmp_path: Path) -> DataLayout:
    """The module's data dir for one test: the registry and the test split, no log, no monitor state."""
    layout = DataLayout(copy_data_dir(data_dir, tmp_path / "data"))
    shutil.rmtree(layout.monitoring, ignore_errors=True)
    return layout


def log_earlier(layout: DataLayout, images: np.ndarray, source: str = "service") -> None:
    """Rows logged a minute ago, as the writer would have written them (the monitor leaves out the last
    seconds, which a writer may still hold)."""
    at = datetime.now(UTC) - timedelta(minutes=1)
    table = log_table(new_ids(len(images)), source, "v2", np.full((len(images), 10), 0.1), images, at)
    write_log_file(layout.prediction_log, table, f"earlier-{new_ids(1)[0]}.parquet")


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
    time.sleep(SETTLE_S)  # a window ends this long before the monitor starts (rows a writer may still hold)

    window = read_window(layout.prediction_log)
    assert len(window) == CLIENTS * REQUESTS == len(set(window.ids)) == len(set(returned))
    assert set(window.ids) == set(returned)
    assert set(window.sources) == {"service"} and set(window.model_versions) == {"v2"}
    darkened = {pixel_digest(image // 2) for image in test_images[:50]}
    assert {pixel_digest(image) for image in window.pixels} == darkened  # the pixels the model saw

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
    assert not layout.monitor_state.exists()
    log_earlier(layout, test_images[60:])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None
    assert json.loads(layout.monitor_state.read_text())["until"] == summary["window"]["until"]
    # a damaged pointer and a damaged reference are named, not fatal: the whole log is judged again
    layout.monitor_state.write_text("{not json")
    (reference,) = layout.monitor_references.glob("*/reference.npz")
    reference.write_bytes(reference.read_bytes()[:100])
    code, _, summary = run_monitor(capsys, "--data-dir", layout.root)
    assert code == 0 and summary["images"] == 100 and summary["drift"] is not None
    assert json.loads(layout.monitor_state.read_text())["until"] == summary["window"]["until"]
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
    assert sorted(window.ids) == sorted(row["prediction_id"] for row in rows if row["error"] is None)
    assert len(window) == 4 and set(window.sources) == {"batch"}
    assert next(row for row in rows if row["error"])["prediction_id"] is None

    assert predict_main([str(folder), "--data-dir", str(layout.root), "--out", str(out), "--no-log"]) == 0
    assert len(read_window(layout.prediction_log)) == 4
    capsys.readouterr()


def test_a_small_window_gets_no_verdict_and_old_log_days_are_deleted(
    prefect_server, data_dir, test_images, capsys, tmp_path
):
    layout = private_copy(data_dir, tmp_path)
    log_earlier(layout, test_images[:60])
    old_day = layout.prediction_log / f"day={(datetime.now(UTC) - timedelta(days=40)).date()}"
    old_day.mkdir()
    code, lines, summary = run_monitor(capsys, "--data-dir", layout.root, "--last", "1000", "--keep-days", "30")
    assert code == 0 and summary["images"] == 60 and summary["drift"] is None and summary["signals"] == {}
    assert "no verdict: 60 images in the window, fewer than 100" in lines[-2]
    assert not old_day.exists() and len(read_window(layout.prediction_log)) == 60


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

    (tmp_path / "monitoring").write_text("a file where the folder should be")
    assert start_prediction_log(tmp_path / "monitoring" / "log") is None
    assert "the prediction log is off" in caplog.text


def test_no_champion_exits_2_saying_so(tmp_path, capsys):
    assert monitor_main(["--data-dir", str(tmp_path / "empty")]) == 2
    assert "no champion" in capsys.readouterr().out.strip().splitlines()[-1]
