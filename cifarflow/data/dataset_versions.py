"""Added batches (`batches/<batch id>/`: shards and `batch.json`, written whole, never changed; withdrawn by a
move to `batches-withdrawn/`) and dataset versions: the hash of [ingested shards, batch 1, batch 2, …]."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

from cifarflow.data.shards import SPLITS, write_shard
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_directory, field_problem, read_json, text_digest, write_json
from cifarflow.layout import DataLayout

BATCH_FILE = "batch.json"
# batch.json's fields that are read, and each shard entry's: name → accepted types
BATCH_FIELDS = {"batch_id": (str,), "rows": (int,), "class_counts": (dict,), "shards": (list,)}
SHARD_FIELDS = {"path": (str,), "sha256": (str,), "rows": (int,)}


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    rows: int
    batch_sha256: str  # over its shards' sha256s: the batch's content identity
    class_counts: dict[str, int]
    directory: Path


def new_batch_id(content_digest: str, now: datetime | None = None) -> str:
    """`20250101T120000Z-<8 hex>`: sorts in the order added; the content digest avoids collisions."""
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{content_digest[:8]}"


def write_batch(layout: DataLayout, batch_id: str, table, record: dict[str, Any]) -> BatchInfo:
    """Write one batch (a table in the shard schema) whole, or not at all; FileExistsError if it exists."""
    target = layout.batch_dir(batch_id)
    if target.exists():
        raise FileExistsError(f"batch {batch_id} exists already; batches are immutable")
    with atomic_directory(target) as staging:
        entry = write_shard(table, staging / "part-00000.parquet", "part-00000.parquet")
        write_json(staging / BATCH_FILE, record | {"batch_id": batch_id, "shards": [entry], "rows": table.num_rows})
    return read_batch(target)


def read_record(directory: Path) -> dict[str, Any]:
    """The batch's batch.json; PipelineInputError naming the file and the fix when it is missing or damaged."""
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
    content = text_digest([s["sha256"] for s in record["shards"]])
    return BatchInfo(record["batch_id"], record["rows"], content, record["class_counts"], directory)


def batch_shards(batch: BatchInfo) -> list[dict[str, Any]]:
    shards = read_record(batch.directory)["shards"]
    return [s | {"path": str(batch.directory / s["path"])} for s in shards]


def active_batches(layout: DataLayout) -> list[BatchInfo]:
    """The batches in the training data, oldest first (hidden entries are unfinished writes)."""
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
    image_size: int  # S: the images are (S, S, 3) uint8

    @property
    def train_images(self) -> int:
        return self.base_train_images + sum(b.rows for b in self.batches)

    fingerprint = property(attrgetter("version"))

    def lineage(self) -> dict[str, Any]:
        return {
            "dataset_version": self.version,
            "base": {"dataset_sha256": self.base_sha256, "images": self.base_train_images},
            "batches": [{"batch_id": b.batch_id, "images": b.rows, "sha256": b.batch_sha256} for b in self.batches],
            "train_images": self.train_images,
            "test_images": self.test_images,
        }


def current_version(layout: DataLayout) -> DatasetVersion:
    """The ingested manifest plus the active batches (JSON only); PipelineInputError when nothing is ingested."""
    if not layout.shard_manifest.is_file():
        raise PipelineInputError(
            f"no ingested data in {layout.root}; run `python flows/cifar_flow.py --data-dir {layout.root} "
            "--stages ingest` (or `make run`) first"
        )
    manifest = read_json(layout.shard_manifest)
    if "image_size" not in manifest:
        raise PipelineInputError(
            f"the shards in {layout.root} were ingested before data sets recorded their image size; run the pipeline "
            f"once (`python flows/cifar_flow.py --data-dir {layout.root}`) to ingest them again"
        )
    batches = active_batches(layout)
    version = text_digest(manifest["dataset_sha256"], [b.batch_sha256 for b in batches])[:16]
    train, test = (manifest["splits"][split]["rows"] for split in SPLITS)
    names, size = manifest["label_names"], manifest["image_size"]
    return DatasetVersion(version, manifest["dataset_sha256"], train, test, batches, names, size)


def remove_unfinished(layout: DataLayout) -> None:
    """Drop the staging folders a killed `add_images` left; only under the intake lock."""
    for stale in layout.batches.glob(".*.part") if layout.batches.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)


def batch_with_origin(layout: DataLayout, origin: dict[str, Any]) -> BatchInfo | None:
    """The batch, active or withdrawn, whose batch.json names `origin`, or None (damaged withdrawn ones skipped)."""
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
    """The directory of an active batch; PipelineInputError listing the active ones."""
    source = layout.batch_dir(batch_id)
    if batch_id.startswith(".") or "/" in batch_id or not (source / BATCH_FILE).is_file():
        known = ", ".join(b.batch_id for b in active_batches(layout)) or "none"
        raise PipelineInputError(f"no batch {batch_id!r} in {layout.batches} (active batches: {known})")
    return source


def withdraw_batch(layout: DataLayout, batch_id: str) -> Path:
    """Move a batch to `batches-withdrawn/` in one rename."""
    source = active_batch_dir(layout, batch_id)
    layout.withdrawn_batches.mkdir(parents=True, exist_ok=True)
    target = layout.withdrawn_batches / batch_id
    os.replace(source, target)
    return target
