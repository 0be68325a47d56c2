"""flows/feedback_flow.py through Prefect on a synthetic data dir: new answers become one screened batch
that names its origin; a second run adds nothing; answers naming test images are refused as leaks;
one image answered with two classes is held back until the answers agree; an image the log no longer
holds is reported lost; the command's last line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import current_version
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import read_split
from cifarflow.feedback.answers import AnswerBook, new_answer
from cifarflow.files import read_json
from cifarflow.journal import KILL_AT
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import PredictionLog, new_ids
from tests.live_server import REPO_ROOT
from tests.synthetic import CLASSES
from tests.test_growth import smooth_images


@pytest.fixture
def data_dir(tmp_path, synthetic_archive) -> Path:
    data_dir = tmp_path / "data"
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=data_dir, rows_per_shard=100))
    return data_dir


def serve(data_dir: Path, pixels: np.ndarray, predicted: int = 0) -> list[str]:
    """Log `pixels` as the service would have scored them (every one predicted as class `predicted`)."""
    ids = new_ids(len(pixels))
    probabilities = np.full((len(pixels), len(CLASSES)), 0.02, np.float32)
    probabilities[:, predicted] = 1 - 0.02 * (len(CLASSES) - 1)
    with PredictionLog(DataLayout(data_dir).prediction_log) as prediction_log:
        prediction_log.append(ids, "service", "v1", probabilities, pixels)
    return ids


def answer(data_dir: Path, prediction_id: str, label: str, reviewer: str = "alice") -> None:
    AnswerBook(DataLayout(data_dir).prediction_log).record(new_answer(prediction_id, label, CLASSES[0], "v1", reviewer))


def export(data_dir: Path) -> dict:
    from flows.feedback_flow import export_feedback

    return export_feedback(data_dir)


def test_new_answers_become_one_batch_and_a_second_run_adds_nothing(prefect_server, data_dir, capsys):
    from flows.feedback_flow import main

    layout = DataLayout(data_dir)
    before = current_version(layout)
    images = smooth_images(8, 21)
    ids = serve(data_dir, images)
    for i, prediction_id in enumerate(ids):
        answer(data_dir, prediction_id, ("cat", "ship")[i % 2], reviewer=("alice", "bob")[i % 2])
    answer(data_dir, ids[0], "dog")  # answered again: the last answer counts

    assert main(["--data-dir", str(data_dir)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done: 8 answers: 8 added as batch "), last

    after = current_version(layout)
    assert after.version != before.version and after.train_images == before.train_images + 8
    batch = after.batches[-1]
    record = read_json(batch.directory / "batch.json")
    assert record["origin"]["kind"] == "feedback"
    assert sorted(record["origin"]["prediction_ids"]) == sorted(ids)
    assert record["origin"]["reviewers"] == ["alice", "bob"]
    assert batch.class_counts == {"cat": 3, "dog": 1, "ship": 4}
    shard = read_split(layout.shard_manifest, "train")  # the batch's pixels are exactly the logged ones
    from cifarflow.data.dataset_versions import batch_shards
    from cifarflow.data.shards import read_shards, shard_files

    stored, labels = read_shards(*shard_files(batch.directory, batch_shards(batch)))
    assert {img.tobytes() for img in stored} == {img.tobytes() for img in images}
    assert shard[0].shape[1:] == (32, 32, 3)
    exported = read_json(layout.feedback_exported)["answers"]
    assert {v["verdict"] for v in exported.values()} == {"added"} and exported[ids[0]]["label"] == "dog"

    again = export(data_dir)
    assert again["headline"] == "no new answers since the last export"
    assert current_version(layout).version == after.version
    assert main(["--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done: no new answers since the last export"


def test_answers_about_test_images_are_refused_as_leaks(prefect_server, data_dir, capsys):
    from flows.feedback_flow import main

    layout = DataLayout(data_dir)
    before = current_version(layout)
    test_images, _ = read_split(layout.shard_manifest, "test")
    ids = serve(data_dir, test_images[:5])
    for prediction_id in ids:
        answer(data_dir, prediction_id, "cat")
    assert main(["--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()  # each refused answer and why, in the terminal
    assert "5 answers not added:" in printed
    for prediction_id in ids:
        assert any(line.startswith(f"  {prediction_id} (cat): refused: test-set leak") for line in printed), printed
    summary = read_json(next(layout.feedback_exports.glob("*/summary.json")))
    assert summary["counts"]["refused"] == 5 and summary["counts"]["added"] == 0
    assert all("test-set leak" in a["reason"] for a in summary["answers"])
    assert summary["batch_id"] is None and current_version(layout).version == before.version
    assert export(data_dir)["export_id"] is None  # handled: a refused answer is not tried again


def test_one_image_answered_two_ways_is_held_until_the_answers_agree(prefect_server, data_dir):
    layout = DataLayout(data_dir)
    image, other = smooth_images(2, 33)
    first, second = serve(data_dir, np.stack([image, image]))  # the same picture, served twice
    (third,) = serve(data_dir, other[None])
    answer(data_dir, first, "cat", reviewer="alice")
    answer(data_dir, second, "dog", reviewer="bob")
    answer(data_dir, third, "ship")

    summary = export(data_dir)
    assert summary["counts"]["added"] == 1 and summary["counts"]["held"] == 2
    (held,) = summary["held"]
    assert held["labels"] == ["cat", "dog"] and {a["prediction_id"] for a in held["answers"]} == {first, second}
    report = (Path(summary["path"]).parent / "report.md").read_text()
    assert "Held back" in report and first in report and second in report
    assert first not in read_json(layout.feedback_exported)["answers"]

    still = export(data_dir)  # nothing changed: still held, nothing added
    assert still["counts"]["held"] == 2 and still["counts"]["added"] == 0

    answer(data_dir, second, "cat", reviewer="bob")  # bob changes his mind: one answer remains
    settled = export(data_dir)
    assert settled["held"] == [] and settled["counts"]["added"] == 1 and settled["counts"]["duplicate"] == 1
    batch = current_version(layout).batches[-1]
    assert batch.class_counts == {"cat": 1}


def test_an_answer_whose_image_left_the_log_is_reported_lost(prefect_server, data_dir):
    layout = DataLayout(data_dir)
    answer(data_dir, "0123456789abcdef0123456789abcdef", "cat")
    summary = export(data_dir)
    assert summary["counts"]["lost"] == 1 and summary["batch_id"] is None
    assert "retention" in summary["answers"][0]["reason"]
    assert AnswerBook(layout.prediction_log).refresh()["0123456789abcdef0123456789abcdef"].label == "cat"  # kept
    assert export(data_dir)["export_id"] is None


def test_an_answer_contradicting_the_training_data_is_a_conflict_not_a_silent_duplicate(prefect_server, data_dir):
    """Re-answering an image already added with another class cannot relabel the training data: the
    export says so (`conflict`, naming the class it holds and what to do). (An ingested image answered
    with another class: tests/test_feedback_units.py; every synthetic training image is a near copy of a
    synthetic test image, so here it would be refused as a leak first.)"""
    (fresh,) = serve(data_dir, smooth_images(1, 44))
    answer(data_dir, fresh, "dog")
    assert export(data_dir)["counts"]["added"] == 1
    answer(data_dir, fresh, "cat")  # changed their mind after the export

    summary = export(data_dir)
    verdicts = {a["prediction_id"]: a for a in summary["answers"]}
    assert summary["counts"]["conflict"] == 1 and summary["counts"]["added"] == 0, summary["answers"]
    assert "holds this image as dog, the answer says cat" in verdicts[fresh]["reason"]
    assert "--withdraw" in verdicts[fresh]["reason"]
    assert "contradicting it" in summary["headline"]


def test_a_damaged_or_missing_record_of_what_was_exported_stops_the_export(prefect_server, data_dir, capsys):
    from flows.feedback_flow import main

    layout = DataLayout(data_dir)
    (pid,) = serve(data_dir, smooth_images(1, 55))
    answer(data_dir, pid, "cat")
    assert export(data_dir)["counts"]["added"] == 1
    answer(data_dir, pid, "dog")
    layout.feedback_exported.write_text("{not json")
    assert main(["--data-dir", str(data_dir)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "exported.json is damaged" in last and "nothing was exported" in last
    layout.feedback_exported.unlink()
    assert main(["--data-dir", str(data_dir)]) == 1
    assert "exported.json is missing, but 1 earlier exports" in capsys.readouterr().out.strip().splitlines()[-1]
    assert len(current_version(layout).batches) == 1


# what a hand or a failing disk left as the export's journal → what the message says (cut short, not an
# object: tests/test_feedback_units.py)
JOURNAL_DAMAGE = {
    "no plan": ('{"export_id": "20260101T000000Z-abcdef12"}', "no `plan` field"),
    "a plan of another shape": ('{"export_id": "x", "plan": {"ready": []}}', "its `plan` is not one: KeyError"),
}


@pytest.mark.parametrize("damage", JOURNAL_DAMAGE)
def test_a_damaged_export_journal_stops_the_export_naming_it_and_deleting_it_goes_on(
    prefect_server, data_dir, capsys, damage
):
    """The journal a killed export left, damaged: the next run stops, naming the file, what is wrong and
    what to do (not a bare KeyError); once deleted as it says, the export runs."""
    from flows.feedback_flow import main

    layout = DataLayout(data_dir)
    (pid,) = serve(data_dir, smooth_images(1, 56))
    answer(data_dir, pid, "cat")
    text, problem = JOURNAL_DAMAGE[damage]
    layout.feedback_journal.parent.mkdir(parents=True, exist_ok=True)
    layout.feedback_journal.write_text(text)
    assert main(["--data-dir", str(data_dir)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"error: {layout.feedback_journal} is damaged ("), last
    assert problem in last and last.endswith("delete it to go on without finishing that run (check its output by hand)")
    layout.feedback_journal.unlink()
    assert main(["--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("done: 1 answers: 1 added as batch ")


def test_a_batch_withdrawn_after_its_export_was_killed_is_not_added_again(prefect_server, cli_env, data_dir, capsys):
    """An export SIGKILLed after its batch was written, the batch then withdrawn by hand, the export
    resumed: its answers stand as `added` to that batch (recognised by its origin among the withdrawn),
    and the withdrawn images are not written again as a new batch."""
    from flows.add_images import main as add_images_main
    from flows.feedback_flow import main

    layout = DataLayout(data_dir)
    for number, prediction_id in enumerate(serve(data_dir, smooth_images(4, 57))):
        answer(data_dir, prediction_id, ("cat", "ship")[number % 2])
    killed = subprocess.run(
        [sys.executable, "flows/feedback_flow.py", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        env=cli_env | {KILL_AT: "feedback:batch-added"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (batch,) = current_version(layout).batches
    assert add_images_main(["--withdraw", batch.batch_id, "--data-dir", str(data_dir)]) == 0

    assert main(["--data-dir", str(data_dir)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"done: 4 answers: 4 added as batch {batch.batch_id} ") and "resumed export" in last, last
    assert current_version(layout).batches == []  # withdrawn, and not added again
    assert {v["verdict"] for v in read_json(layout.feedback_exported)["answers"].values()} == {"added"}
