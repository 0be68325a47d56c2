"""The product's main loop on synthetic data, through Prefect: add images → the next run trains on
the ingested data plus every batch (and only then recomputes), re-adding changes nothing, withdrawing
goes back to the previous version; validation stops a bad batch; the promotion floor; warm start."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import current_version, write_batch
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import read_split, rows_table
from cifarflow.files import read_json
from cifarflow.registry.store import read_champion_version
from flows.add_images import main as add_images_main
from tests.flow_helpers import ALL_CACHED, ALL_COMPLETED, run_flow
from tests.synthetic import CLASSES


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Photo-like images unlike the synthetic classes or one another: upscaled random 4×4 colour grids."""
    rng = np.random.default_rng(seed)
    grids = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(g).resize((32, 32), Image.Resampling.BILINEAR)) for g in grids])


def write_inbox(root: Path, config) -> Path:
    """12 new images (cat and ship), a copy of a test image, a broken file, an unknown class."""
    for i, pixels in enumerate(smooth_images(12, 5)):
        folder = root / ("Cat", "ship")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((64, 64)).save(folder / f"new-{i}.png")
    test_images, _ = read_split(config.layout.shard_manifest, "test")
    Image.fromarray(test_images[7]).save(root / "Cat" / "leak.png")
    (root / "ship" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "unicorn").mkdir()
    Image.fromarray(smooth_images(1, 9)[0]).save(root / "unicorn" / "u.png")
    return root


def add(capsys, *args) -> tuple[int, str, str]:
    code = add_images_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_add_images_then_retrain_on_the_grown_data(prefect_server, tiny_config, tmp_path, capsys):
    data_dir = tiny_config.data_dir
    code, out, _ = add(capsys, tmp_path, "--data-dir", data_dir)
    last = out.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "--stages ingest" in last  # nothing ingested: says what to run
    assert add(capsys, tmp_path / "missing", "--data-dir", data_dir)[0] == 2

    state, states = run_flow(tiny_config)
    assert state.is_completed() and states == ALL_COMPLETED
    before = current_version(tiny_config.layout)

    inbox = write_inbox(tmp_path / "inbox", tiny_config)
    snapshot = sorted((p, p.stat().st_mtime_ns) for p in inbox.rglob("*"))
    code, out, _ = add(capsys, inbox, "--data-dir", data_dir)
    assert code == 0
    summary_path = Path(out.strip().splitlines()[-1].removeprefix("done: summary at "))
    summary = read_json(summary_path)
    printed = out.splitlines()  # each rejected file and why, in the terminal (not only in summary.json)
    assert "3 files rejected:" in printed
    for name, why in (
        ("Cat/leak.png", "test-set leak"),
        ("ship/broken.jpg", "does not decode"),
        ("unicorn/u.png", "not one of this data dir's classes"),
    ):
        assert any(line.startswith(f"  {inbox / name}: ") and why in line for line in printed), printed
    assert summary["added"] == 12 and summary["duplicates"] == 0
    assert summary["class_counts"] == {"cat": 6, "ship": 6}
    reasons = {Path(r["path"]).name: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {"leak.png", "broken.jpg", "u.png"}
    assert "test-set leak" in reasons["leak.png"] and "test-00007" in reasons["leak.png"]
    assert "is not one of this data dir's classes" in reasons["u.png"] and "does not decode" in reasons["broken.jpg"]
    assert summary["previous_dataset_version"] == before.version != summary["dataset_version"]
    assert (summary_path.parent / "report.md").is_file() and (summary_path.parent / "added.png").is_file()
    assert sorted((p, p.stat().st_mtime_ns) for p in inbox.rglob("*")) == snapshot  # the inbox is only read

    code, out, _ = add(capsys, inbox, "--data-dir", data_dir)  # the same folder again: nothing new
    again = read_json(out.strip().splitlines()[-1].removeprefix("done: summary at "))
    assert code == 0 and again["added"] == 0 and again["duplicates"] == 12 and again["batch_id"] is None
    assert again["dataset_version"] == summary["dataset_version"]
    assert len(current_version(tiny_config.layout).batches) == 1

    state, states = run_flow(tiny_config)
    assert state.is_completed()
    assert states == ALL_COMPLETED | {"ingest": "Cached"}  # a new dataset version: everything after ingest
    metrics = read_json(tiny_config.layout.latest_report / "metrics.json")
    assert metrics["train_images"] == 312 and metrics["dataset_version"] == summary["dataset_version"]
    card = read_json(tiny_config.layout.latest_report / "model_card.json")
    assert card["lineage"]["batches"][0]["batch_id"] == summary["batch_id"]
    assert card["lineage"]["batches"][0]["images"] == 12
    assert "312 training images" in (tiny_config.layout.latest_report / "report.md").read_text().replace(",", "")

    _, states = run_flow(tiny_config)  # no new batch: nothing is recomputed
    assert states == ALL_CACHED

    champion = read_json(read_champion_version(tiny_config.layout.registry).directory / "version.json")
    code, out, _ = add(capsys, "--withdraw", summary["batch_id"], "--data-dir", data_dir)
    assert code == 0 and before.version in out
    assert current_version(tiny_config.layout).version == before.version
    _, states = run_flow(tiny_config)  # back on the first version: its outputs are still there...
    trained_on_withdrawn = champion["batch_ids"] == [summary["batch_id"]]
    assert states == ALL_CACHED | ({"promote": "Completed"} if trained_on_withdrawn else {})
    if trained_on_withdrawn:  # ...but a champion trained on the withdrawn batch no longer stands for the data
        decision = read_json(read_champion_version(tiny_config.layout.registry).directory / "version.json")
        assert decision["batch_ids"] == [] and "withdrawn since" in decision["decision"]
    assert add(capsys, "--withdraw", summary["batch_id"], "--data-dir", data_dir)[0] == 2  # not active any more


def test_a_batch_that_fails_validation_stops_the_run_before_preprocess(prefect_server, tiny_config):
    state, _ = run_flow(tiny_config, stages=["ingest"])
    assert state.is_completed()
    labels = np.array([12, 3], np.uint8)  # 12 is no class: only a hand-made batch could hold it
    table = rows_table(["a", "b"], ["x", "y"], np.array([1, 3], np.uint8), CLASSES, smooth_images(2, 1))
    table = table.set_column(2, table.schema.field("label"), __import__("pyarrow").array(labels, "uint8"))
    write_batch(tiny_config.layout, "20260101T000000Z-bad", table, {"class_counts": {}})
    state, states = run_flow(tiny_config)
    assert state.is_failed() and states["validate"] == "Failed" and "preprocess" not in states
    with pytest.raises(Exception, match=r"labels up to 12 \(must be 0..9\)"):
        state.result()


def one_image_inbox(root: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    Image.fromarray(smooth_images(1, 6)[0]).save(root / "cat" / "new.png")
    return root


def without_shards(path: Path) -> None:
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "shards"}))


BATCH_DAMAGE = {  # how a batch's batch.json is damaged → what the message says is wrong
    "emptied": (lambda p: p.write_text(""), "JSONDecodeError"),
    "a key removed by hand": (without_shards, "no `shards` field"),
    "deleted": (Path.unlink, "missing"),
}


@pytest.mark.parametrize("damage", BATCH_DAMAGE)
def test_a_damaged_batch_record_is_named_with_the_fix_and_following_it_works(
    prefect_server, tiny_config, synthetic_archive, tmp_path, capsys, damage
):
    """A dataset version's batch.json damaged: add_images (like every reader of the dataset version)
    stops naming the file and what to do, not a bare JSONDecodeError or KeyError, nor does it drop the
    batch from the training data unsaid; the command it gives takes the batch out, and the next run works."""
    layout = tiny_config.layout
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    table = rows_table(["a", "b"], ["x", "y"], np.array([3, 8], np.uint8), CLASSES, smooth_images(2, 1))
    write_batch(layout, "20260101T000000Z-mine", table, {"class_counts": {"cat": 1, "ship": 1}})
    record = layout.batch_dir("20260101T000000Z-mine") / "batch.json"
    harm, problem = BATCH_DAMAGE[damage]
    harm(record)
    inbox = one_image_inbox(tmp_path / "inbox")

    code, out, err = add(capsys, inbox, "--data-dir", tiny_config.data_dir)
    last = out.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"error: {record} is damaged (") and problem in last, out + err
    assert "Traceback" not in err and "restore it from a backup" in last
    subprocess.run(["sh", "-c", re.findall(r"`([^`]+)`", last)[-1]], check=True)  # the fix, as said
    code, out, _ = add(capsys, inbox, "--data-dir", tiny_config.data_dir)
    assert code == 0 and out.strip().splitlines()[-1].startswith("done: summary at ")
    assert len(current_version(layout).batches) == 1 and (layout.withdrawn_batches / "20260101T000000Z-mine").is_dir()


INTAKE_JOURNAL_DAMAGE = {  # the journal a killed add_images or withdraw left, edited → what the message says
    "no batch": ('{"run": "add-images"}', "no `batch_id` field"),
    "an addition without its summary": ('{"run": "add-images", "batch_id": "20260101T000000Z-ab"}', "no `summary`"),
    "a run of no known kind": ('{"run": "merge", "batch_id": "20260101T000000Z-ab"}', "`run` is 'merge'"),
}


@pytest.mark.parametrize("damage", INTAKE_JOURNAL_DAMAGE)
def test_a_damaged_intake_journal_stops_add_images_naming_it(
    prefect_server, tiny_config, synthetic_archive, tmp_path, capsys, damage
):
    """Not a bare KeyError: the file, what is wrong and what to do; once deleted as it says, the run goes on."""
    layout = tiny_config.layout
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    text, problem = INTAKE_JOURNAL_DAMAGE[damage]
    layout.intake_journal.write_text(text)
    inbox = one_image_inbox(tmp_path / "inbox")
    code, out, _ = add(capsys, inbox, "--data-dir", tiny_config.data_dir)
    last = out.strip().splitlines()[-1]
    assert code == 1 and last.startswith(f"error: {layout.intake_journal} is damaged (") and problem in last, last
    assert last.endswith("delete it to go on without finishing that run (check its output by hand)")
    layout.intake_journal.unlink()
    code, out, _ = add(capsys, inbox, "--data-dir", tiny_config.data_dir)
    assert code == 0 and len(current_version(layout).batches) == 1


def test_a_challenger_below_the_floor_is_not_promoted(prefect_server, tiny_config):
    state, _ = run_flow(tiny_config.model_copy(update={"min_accuracy": 0.999}))
    assert state.is_completed()
    promotion = read_json(next(tiny_config.layout.reports.glob("*/promotion.json")))["decision"]
    assert not promotion["promoted"] and promotion["reason"] == "below-floor" and promotion["min_accuracy"] == 0.999
    assert read_champion_version(tiny_config.layout.registry) is None
    report = (tiny_config.layout.latest_report / "report.md").read_text()
    assert "below the promotion floor 0.999" in report

    state, _ = run_flow(tiny_config)  # seed has no floor by default: the same model is now promoted
    assert read_json(tiny_config.layout.latest_report / "promotion.json")["decision"]["reason"] == "first"


def test_warm_start_begins_from_the_champions_weights(prefect_server, tiny_config):
    run_flow(tiny_config)  # the champion: one epoch from scratch
    cold = read_json(next(tiny_config.layout.models.glob("*/history.json")))
    warm_config = tiny_config.model_copy(update={"warm_start": "champion", "seed": 7})
    state, states = run_flow(warm_config)
    assert state.is_completed() and states["train"] == "Completed"
    train = read_json(tiny_config.layout.latest_report / "model_card.json")["warm_start"]
    assert train["applied"] and train["requested"] == "champion" and train["champion_id"]
    warm = read_json(tiny_config.layout.model_dir(_train_key(warm_config)) / "history.json")
    assert warm[0]["loss"] < 0.5 * cold[0]["loss"]  # it starts where the champion left off
    assert "from the champion" in (tiny_config.layout.latest_report / "report.md").read_text()


def _train_key(config) -> str:
    from cifarflow.orchestration.cache import last_state

    return last_state(config.layout.stage_state, "train")["key"]
