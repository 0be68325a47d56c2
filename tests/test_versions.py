"""Dataset versions and the validate stage's logic, on tiny synthetic data (no Prefect):
batches are written whole or not at all (even under SIGKILL), versions move only with batches,
withdrawal, and validation's hard failures and soft warnings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import (
    active_batches,
    current_version,
    new_batch_id,
    remove_unfinished,
    withdraw_batch,
    write_batch,
)
from cifarflow.data.ingest import ingest_source
from cifarflow.data.shards import read_split, rows_table
from cifarflow.errors import PipelineInputError
from cifarflow.files import file_digest
from cifarflow.layout import DataLayout
from cifarflow.validation.validate import DataValidationError, find_validation, validate_dataset
from tests.synthetic import CLASSES, batch_bytes, class_images, meta_bytes, write_archive

REPO_ROOT = Path(__file__).resolve().parents[1]


def balanced_archive(path: Path) -> Path:
    """Like the synthetic archive, but every class has exactly 30 training images."""
    rng = np.random.default_rng(3)
    members = {}
    for i in range(1, 6):
        labels = np.arange(60) % 10
        members[f"data_batch_{i}"] = batch_bytes(
            "train", labels, class_images(labels, rng), [f"{i}_{j}" for j in range(60)]
        )
    labels = np.arange(100) % 10
    members["test_batch"] = batch_bytes("test", labels, class_images(labels, rng), [f"t{j}" for j in range(100)])
    members["batches.meta"] = meta_bytes()
    return write_archive(path, members)


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    layout = DataLayout(tmp_path / "data")
    archive = balanced_archive(tmp_path / "archive.tar.gz")
    ingest_source(PipelineConfig(source=str(archive), data_dir=layout.root, rows_per_shard=100))
    return layout


def random_images(n: int, seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 32, 32, 3), dtype=np.uint8)


def add_batch(layout: DataLayout, images: np.ndarray, labels, tag: str = "x"):
    labels = np.asarray(labels, np.uint8)
    table = rows_table(
        [f"add-{tag}-{i}" for i in range(len(labels))], ["/in/x.png"] * len(labels), labels, CLASSES, images
    )
    counts = {CLASSES[k]: int(v) for k, v in zip(*np.unique(labels, return_counts=True))}
    return write_batch(layout, new_batch_id(tag * 8), table, {"inbox": "/in", "class_counts": counts})


def test_a_batch_moves_the_version_and_withdrawing_it_moves_it_back(layout):
    base = current_version(layout)
    assert base.batches == [] and base.train_images == 300 and base.test_images == 100
    batch = add_batch(layout, random_images(7, 1), [2] * 7)
    grown = current_version(layout)
    assert grown.version != base.version and grown.train_images == 307
    assert grown.lineage()["batches"] == [{"batch_id": batch.batch_id, "images": 7, "sha256": batch.batch_sha256}]
    assert current_version(layout).version == grown.version  # nothing else moves it

    with pytest.raises(FileExistsError):  # immutable: the same id is never written twice
        add_batch(layout, random_images(7, 1), [2] * 7)
    withdraw_batch(layout, batch.batch_id)
    assert current_version(layout).version == base.version
    assert (layout.withdrawn_batches / batch.batch_id / "batch.json").is_file()  # kept, not deleted
    with pytest.raises(PipelineInputError, match="no batch 'nope'"):
        withdraw_batch(layout, "nope")


def test_no_ingested_data_says_what_to_run_first(tmp_path):
    with pytest.raises(PipelineInputError, match="--stages ingest"):
        current_version(DataLayout(tmp_path / "empty"))


def test_a_kill_during_the_batch_write_leaves_the_dataset_unchanged(layout):
    before = current_version(layout).version
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        import numpy as np
        import pyarrow.parquet as pq
        from cifarflow.data import dataset_versions as versions
        from cifarflow.data.shards import rows_table
        from cifarflow.layout import DataLayout

        real_write = pq.write_table
        def write_then_die(table, where, **kwargs):  # the shard is on disk, the batch not yet renamed
            real_write(table, where, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        pq.write_table = write_then_die
        images = np.zeros((3, 32, 32, 3), np.uint8)
        table = rows_table(["a", "b", "c"], ["x"] * 3, np.zeros(3, np.uint8), {CLASSES!r}, images)
        layout = DataLayout(Path({str(layout.root)!r}))
        versions.write_batch(layout, "killed", table, {{"class_counts": {{}}}})
        """
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert process.returncode == -9, process.stderr
    assert list(layout.batches.glob(".killed.*.part"))  # the half-written batch is there, hidden
    assert active_batches(layout) == [] and current_version(layout).version == before
    remove_unfinished(layout)
    assert list(layout.batches.iterdir()) == []


def test_validation_writes_the_version_and_flags_soft_problems(layout, tmp_path):
    clean = validate_dataset(layout, current_version(layout), tmp_path / "v0")
    assert clean.warnings == () and clean.train_images == 300

    train, _ = read_split(layout.shard_manifest, "train")
    dark = random_images(60, 2, 0, 40)  # a batch of night shots: its pixel histogram drifts
    add_batch(layout, dark, np.arange(60) % 10, "dark")
    add_batch(layout, train[:5].copy(), [0] * 5, "copy")  # five ingested images again
    version = current_version(layout)
    result = validate_dataset(layout, version, tmp_path / "v1")
    warnings = "\n".join(result.warnings)
    assert "drift: batch" in warnings and "dark" in warnings
    assert "duplicates: 5 images" in warnings
    assert result.train_images == 365 and result.dataset_version == version.version
    stats = json.loads((result.directory / "validation.json").read_text())
    dark_row = next(p for p in stats["parts"] if "dark" in p["name"])
    assert dark_row["drift_psi"] > 0.25 and max(dark_row["channel_mean"]) < 0.1
    dataset = json.loads(result.dataset_path.read_text())
    assert sum(s["rows"] for s in dataset["splits"]["train"]) == 365
    assert sum(s["rows"] for s in dataset["splits"]["test"]) == 100  # always the official test set

    add_batch(layout, random_images(50, 4), [1] * 50, "lopsided")  # class 1: 30 + 50 + 6 vs 30 + 6
    assert "class imbalance: automobile" in "\n".join(
        validate_dataset(layout, current_version(layout), tmp_path / "v2").warnings
    )


def test_validation_fails_hard_on_wrong_labels_schema_or_test_copies(layout, tmp_path):
    labels = pa.array([12, 3], pa.uint8())  # 12 is no CIFAR-10 class
    table = rows_table(["a", "b"], ["x", "y"], np.array([1, 3], np.uint8), CLASSES, random_images(2, 5))
    table = table.set_column(table.schema.get_field_index("label"), table.schema.field("label"), labels)
    write_batch(layout, "20260101T000000Z-badlabel", table, {"class_counts": {}})
    with pytest.raises(DataValidationError, match=r"labels up to 12 \(must be 0..9\)"):
        validate_dataset(layout, current_version(layout), tmp_path / "v")
    assert not (tmp_path / "v").exists()  # nothing written for a version that failed
    withdraw_batch(layout, "20260101T000000Z-badlabel")

    bad = add_batch(layout, random_images(2, 6), [1, 2], "schema")
    shard = bad.directory / "part-00000.parquet"
    wrong = pq.read_table(shard).drop(["filename"])
    pq.write_table(wrong, shard)
    record = json.loads((bad.directory / "batch.json").read_text())
    record["shards"][0]["sha256"] = file_digest(shard)
    (bad.directory / "batch.json").write_text(json.dumps(record))
    with pytest.raises(DataValidationError, match="instead of the ingest schema"):
        validate_dataset(layout, current_version(layout), tmp_path / "v")
    withdraw_batch(layout, bad.batch_id)

    test_images, _ = read_split(layout.shard_manifest, "test")
    add_batch(layout, test_images[:3].copy(), [0, 0, 0], "leak")
    with pytest.raises(DataValidationError, match=r"3 images are exact copies of test images \(/in/x.png = t\d+, "):
        validate_dataset(layout, current_version(layout), tmp_path / "v")  # the batch's file and the test file


def test_a_validation_is_reused_only_for_its_own_version_and_intact_shards(layout, tmp_path):
    batch = add_batch(layout, random_images(4, 7), [5] * 4)
    version = current_version(layout)
    result = validate_dataset(layout, version, tmp_path / "v")
    assert find_validation(tmp_path / "v", version.version) == result
    assert find_validation(tmp_path / "v", "another-version") is None
    shard = batch.directory / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])  # a batch shard damaged after validation
    assert find_validation(tmp_path / "v", version.version) is None
