"""Added batches and dataset versions: the training data is the ingested shards plus every batch.

A batch is a directory `batches/<batch id>/` holding Parquet shard(s) in the ingest schema and
`batch.json` (its rows, class counts, shard sha256s, where the images came from). It is written
whole under a hidden name and renamed into place, so it exists completely or not at all, and it is
never changed afterwards. Withdrawing a batch moves it to `batches-withdrawn/` (kept, not deleted).
A batch.json that is missing, empty, cut short or edited into something else stops every command that
reads the dataset version with a PipelineInputError naming the file and what to do (`read_record`);
the validate stage checks each shard against the sha256 batch.json records.

A dataset version is the content hash of the list [ingested shards, batch 1, batch 2, …] (batches
in the order they were added): adding or withdrawing a batch moves it, nothing else does. The test
split is always the ingested (official) one, so every version's models are scored on the same images.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cifarflow.data.shards import shard_files
from cifarflow.errors import PipelineInputError
from cifarflow.files import (
    atomic_directory,
    atomic_path,
    field_problem,
    file_digest,
    read_json,
    text_digest,
    write_json,
)
from cifarflow.layout import DataLayout

BATCH_FILE = "batch.json"
# batch.json's fields that are read: name → accepted types (each shard: `path`, `sha256`, `rows`)
BATCH_FIELDS: dict[str, tuple[type, ...]] = {
    "batch_id": (str,),
    "rows": (int,),
    "class_counts": (dict,),
    "shards": (list,),
}
SHARD_FIELDS: dict[str, tuple[type, ...]] = {"path": (str,), "sha256": (str,), "rows": (int,)}


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    rows: int
    batch_sha256: str  # over its shards' sha256s: the batch's content identity
    class_counts: dict[str, int]
    directory: Path

    def lineage(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "images": self.rows, "sha256": self.batch_sha256}


def new_batch_id(content_digest: str, now: datetime | None = None) -> str:
    """Time first, so batches sort in the order they were added; content next, so ids never collide."""
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{content_digest[:8]}"


def write_batch(layout: DataLayout, batch_id: str, table, record: dict[str, Any]) -> BatchInfo:
    """Write one batch (a table in the shard schema) whole, or not at all."""
    target = layout.batch_dir(batch_id)
    if target.exists():
        raise FileExistsError(f"batch {batch_id} exists already; batches are immutable")
    with atomic_directory(target) as staging:
        shard = staging / "part-00000.parquet"
        with atomic_path(shard) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        entry = {
            "path": shard.name,
            "rows": table.num_rows,
            "sha256": file_digest(shard),
            "bytes": shard.stat().st_size,
        }
        write_json(staging / BATCH_FILE, record | {"batch_id": batch_id, "shards": [entry], "rows": table.num_rows})
    return read_batch(target)


def read_record(directory: Path) -> dict[str, Any]:
    """The batch's batch.json, checked for the fields that are read. PipelineInputError, naming the file
    and what to do, when it is missing, unreadable, not JSON, or lacks a field or has one of another type."""
    path = Path(directory) / BATCH_FILE
    try:
        record = read_json(path)
        problem = field_problem(record, BATCH_FIELDS, tuple(BATCH_FIELDS))
        if problem is None:
            shards = (field_problem(shard, SHARD_FIELDS, tuple(SHARD_FIELDS)) for shard in record["shards"])
            problem = next((f"a shard entry: {wrong}" for wrong in shards if wrong), None)
    except FileNotFoundError:
        problem = "missing"
    except (OSError, ValueError) as error:  # unreadable; not JSON (JSONDecodeError, UnicodeDecodeError)
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        withdrawn = Path(directory).parent.with_name("batches-withdrawn")
        raise PipelineInputError(
            f"{path} is damaged ({problem}): restore it from a backup, or take the batch out of the training data "
            f"by hand: `mkdir -p {withdrawn} && mv {directory} {withdrawn}/`"
        )
    return record


def read_batch(directory: Path) -> BatchInfo:
    record = read_record(directory)
    return BatchInfo(
        batch_id=record["batch_id"],
        rows=record["rows"],
        batch_sha256=text_digest([s["sha256"] for s in record["shards"]]),
        class_counts=record["class_counts"],
        directory=directory,
    )


def batch_shards(batch: BatchInfo) -> list[dict[str, Any]]:
    """The batch's shard entries with absolute paths."""
    shards = read_record(batch.directory)["shards"]
    return [s | {"path": str(batch.directory / s["path"])} for s in shards]


def active_batches(layout: DataLayout) -> list[BatchInfo]:
    """The batches in the training data, oldest first. Hidden entries are unfinished writes; any other
    folder is a batch (written whole, then renamed into place), so one without a whole batch.json is
    damaged (`read_record`)."""
    if not layout.batches.is_dir():
        return []
    directories = sorted(d for d in layout.batches.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [read_batch(d) for d in directories]


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    base_sha256: str  # the ingested shards' dataset_sha256
    base_train_images: int
    test_images: int
    batches: list[BatchInfo]
    label_names: list[str]

    @property
    def train_images(self) -> int:
        return self.base_train_images + sum(b.rows for b in self.batches)

    @property
    def fingerprint(self) -> str:
        """The version id: what a stage that reads this version depends on."""
        return self.version

    def lineage(self) -> dict[str, Any]:
        """What a model trained on: the base data and each batch, with image counts."""
        return {
            "dataset_version": self.version,
            "base": {"dataset_sha256": self.base_sha256, "images": self.base_train_images},
            "batches": [b.lineage() for b in self.batches],
            "train_images": self.train_images,
            "test_images": self.test_images,
        }


def version_id(base_sha256: str, batches: list[BatchInfo]) -> str:
    return text_digest(base_sha256, [b.batch_sha256 for b in batches])[:16]


def current_version(layout: DataLayout) -> DatasetVersion:
    """The dataset version on disk now: the ingested manifest plus the active batches (cheap: reads
    only small JSON files; the validate stage checks the shards' content)."""
    if not layout.shard_manifest.is_file():
        raise PipelineInputError(
            f"no ingested data in {layout.root}; run `python flows/cifar_flow.py --data-dir {layout.root} "
            "--stages ingest` (or `make run`) first"
        )
    manifest = read_json(layout.shard_manifest)
    batches = active_batches(layout)
    return DatasetVersion(
        version=version_id(manifest["dataset_sha256"], batches),
        base_sha256=manifest["dataset_sha256"],
        base_train_images=manifest["splits"]["train"]["rows"],
        test_images=manifest["splits"]["test"]["rows"],
        batches=batches,
        label_names=manifest["label_names"],
    )


def dataset_shards(dataset_path: Path, split: str) -> tuple[list[Path], list[int]]:
    """The shard paths and row counts of one split of a validated dataset version (its dataset.json,
    written by the validate stage)."""
    return shard_files(dataset_path.parent, read_json(dataset_path)["splits"][split])


def remove_unfinished(layout: DataLayout) -> None:
    """Drop what a killed `add_images` left half-written (hidden staging directories); call it only
    while holding the intake lock, so no live write is touched."""
    for stale in layout.batches.glob(".*.part") if layout.batches.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)


def batch_with_origin(layout: DataLayout, origin: dict[str, Any]) -> BatchInfo | None:
    """The batch whose record names `origin` (as `add_images` was given it), in the training data or
    withdrawn from it (`is_withdrawn`), or None. A withdrawn batch whose batch.json cannot be read is
    passed over (it is in no dataset version)."""
    for batch in active_batches(layout):
        if read_record(batch.directory).get("origin") == origin:
            return batch
    withdrawn = sorted(layout.withdrawn_batches.iterdir()) if layout.withdrawn_batches.is_dir() else []
    for directory in withdrawn:
        try:
            if read_record(directory).get("origin") == origin:
                return read_batch(directory)
        except PipelineInputError:
            continue
    return None


def is_withdrawn(layout: DataLayout, batch: BatchInfo) -> bool:
    return batch.directory.parent == layout.withdrawn_batches


def active_batch_dir(layout: DataLayout, batch_id: str) -> Path:
    """The directory of an active batch, or an error that lists the active ones."""
    source = layout.batch_dir(batch_id)
    if batch_id.startswith(".") or "/" in batch_id or not (source / BATCH_FILE).is_file():
        known = ", ".join(b.batch_id for b in active_batches(layout)) or "none"
        raise PipelineInputError(f"no batch {batch_id!r} in {layout.batches} (active batches: {known})")
    return source


def withdraw_batch(layout: DataLayout, batch_id: str) -> Path:
    """Move a batch out of the training data (one rename: the version moves only if it succeeds)."""
    source = active_batch_dir(layout, batch_id)
    layout.withdrawn_batches.mkdir(parents=True, exist_ok=True)
    target = layout.withdrawn_batches / batch_id
    os.replace(source, target)
    return target
