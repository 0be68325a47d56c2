"""Reading a dataset version for validation: its parts (the ingested train split, each added batch,
the ingested test split), each shard checked as it is read and its statistics gathered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.dataset_versions import DatasetVersion, batch_shards
from cifarflow.data.shards import SCHEMA, pixel_digest
from cifarflow.data.statistics import pixel_value_counts
from cifarflow.files import file_digest, read_json
from cifarflow.layout import DataLayout
from cifarflow.validation.checks import label_out_of_range, mismatched_label_names

Shards = list[dict[str, Any]]  # {path (absolute), rows, sha256} per shard


@dataclass(frozen=True)
class Part:
    """One part of the version as read from its shards that passed the checks."""

    name: str  # "ingested train", "batch <id>" or "ingested test"
    shards: Shards
    labels: np.ndarray  # (N,) uint8 class ids
    digests: list[str]  # N sha256 hex digests of the images' pixels
    values: np.ndarray  # (3, 256) int64: how many pixels of each channel have each value


def version_shards(layout: DataLayout, version: DatasetVersion) -> list[tuple[str, Shards]]:
    """The version's parts by name with their shards, in order: ingested train, the batches, ingested test."""
    manifest = read_json(layout.shard_manifest)

    def base(split: str) -> Shards:
        return [e | {"path": str(layout.parquet / e["path"])} for e in manifest["splits"][split]["shards"]]

    batches = [(f"batch {b.batch_id}", batch_shards(b)) for b in version.batches]
    return [("ingested train", base("train")), *batches, ("ingested test", base("test"))]


def read_part(name: str, shards: Shards, label_names: list[str]) -> tuple[Part, list[str]]:
    """The part, and its hard problems: each shard's content hash, schema, labels and label names.
    A shard with a problem that makes it unreadable is left out of the part's statistics."""
    problems: list[str] = []
    labels, digests, values = [], [], np.zeros((3, 256), np.int64)
    for shard in shards:
        path = Path(shard["path"])
        if not path.is_file() or file_digest(path) != shard["sha256"]:
            problems.append(f"{name}: shard {path} is missing or changed since it was written")
            continue
        table = pq.read_table(path)
        if not table.schema.equals(SCHEMA):
            problems.append(f"{name}: shard {path} has schema {table.schema} instead of the ingest schema")
            continue
        shard_labels = table.column("label").to_numpy()
        names = table.column("label_name").cast(pa.string()).to_numpy(zero_copy_only=False)
        highest = label_out_of_range(shard_labels)
        if highest is not None:
            problems.append(f"{name}: shard {path} has labels up to {highest} (must be 0..9)")
            continue
        wrong = mismatched_label_names(shard_labels, names, label_names)
        if wrong:
            problems.append(f"{name}: shard {path}: {wrong} label names disagree with their labels")
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images = pixels.reshape(-1, 32 * 32, 3)
        labels.append(shard_labels)
        digests += [pixel_digest(image) for image in images]
        values += pixel_value_counts(images)
    all_labels = np.concatenate(labels) if labels else np.empty(0, np.uint8)
    return Part(name, shards, all_labels, digests, values), problems
