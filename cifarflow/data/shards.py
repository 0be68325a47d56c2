"""Parquet shards of the raw images (SCHEMA; `pixels`: 3,072 uint8 HWC) and the manifest that pins them:
each shard's rows and sha256, and `dataset_sha256` over them, which downstream cache keys use."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.archive import IMAGE_SHAPE, Split
from cifarflow.errors import ShardError
from cifarflow.files import atomic_path, file_digest, read_json, text_digest

MANIFEST_VERSION = 1
ROWS_PER_SHARD = 10_000
PIXELS = int(np.prod(IMAGE_SHAPE))
SPLITS = ("train", "test")

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("filename", pa.string(), nullable=False),
        pa.field("label", pa.uint8(), nullable=False),
        pa.field("label_name", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("pixels", pa.list_(pa.uint8(), PIXELS), nullable=False),
    ]
)


def rows_table(
    image_ids: list[str], filenames: list[str], labels: np.ndarray, label_names: list[str], images: np.ndarray
) -> pa.Table:
    """Images (N, 32, 32, 3) uint8 and their facts as an Arrow table in SCHEMA (pixels zero-copy)."""
    labels = np.asarray(labels)
    pixels = pa.array(np.ascontiguousarray(images).reshape(-1))
    return pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "filename": pa.array(filenames, pa.string()),
            "label": pa.array(labels, pa.uint8()),
            "label_name": pa.DictionaryArray.from_arrays(
                pa.array(labels.astype(np.int8)), pa.array(label_names, pa.string())
            ),
            "pixels": pa.FixedSizeListArray.from_arrays(pixels, PIXELS),
        },
        schema=SCHEMA,
    )


def write_split_shards(
    split_name: str, split: Split, label_names: list[str], out_dir: Path, rows_per_shard: int = ROWS_PER_SHARD
) -> list[dict[str, Any]]:
    """Write `part-NNNNN.parquet` files; return their manifest entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, start in enumerate(range(0, len(split.labels), rows_per_shard)):
        stop = min(start + rows_per_shard, len(split.labels))
        path = out_dir / f"part-{number:05d}.parquet"
        table = rows_table(
            [f"{split_name}-{i:05d}" for i in range(start, stop)],
            split.filenames[start:stop],
            split.labels[start:stop],
            label_names,
            split.images[start:stop],
        )
        entries.append(write_shard(table, path, f"{split_name}/{path.name}"))
    return entries


def write_shard(table: pa.Table, path: Path, name: str) -> dict[str, Any]:
    """Write `table` to `path` as zstd Parquet, atomically; return its manifest entry, its path given as `name`."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"path": name, "rows": table.num_rows, "sha256": file_digest(path), "bytes": path.stat().st_size}


def build_manifest(
    shards: dict[str, list[dict[str, Any]]], label_names: list[str], source: dict[str, Any]
) -> dict[str, Any]:
    dataset_sha256 = text_digest(label_names, {s: [e["sha256"] for e in shards[s]] for s in shards})
    return {
        "version": MANIFEST_VERSION,
        "dataset_sha256": dataset_sha256,
        "label_names": label_names,
        "schema": SCHEMA.to_string(show_schema_metadata=False),
        "source": source,
        "splits": {s: {"rows": sum(e["rows"] for e in shards[s]), "shards": shards[s]} for s in shards},
    }


def verify_manifest(manifest_path: Path) -> dict[str, Any]:
    """The manifest; ShardError when a shard is missing or its size or sha256 changed."""
    if not manifest_path.is_file():
        raise ShardError(f"no shard manifest at {manifest_path}; run the ingest stage first")
    manifest = read_json(manifest_path)
    root = manifest_path.parent
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            path = root / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or file_digest(path) != entry["sha256"]:
                raise ShardError(
                    f"shard {path} is missing or changed since ingest; re-run ingest with --refresh ingest"
                )
    return manifest


def pixel_digest(pixels: np.ndarray) -> str:
    """Identity of one image: sha256 of its 32×32×3 uint8 pixels (what duplicate checks compare)."""
    return hashlib.sha256(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()


def shard_files(root: Path, entries: list[dict[str, Any]]) -> tuple[list[Path], list[int]]:
    """`read_shards`' arguments for manifest shard entries, paths resolved against `root`."""
    return [Path(root) / e["path"] for e in entries], [e["rows"] for e in entries]


def read_split(manifest_path: Path, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split's images (N, 32, 32, 3) uint8 and labels (N,) uint8 from its shards."""
    manifest = verify_manifest(manifest_path)
    return read_shards(*shard_files(manifest_path.parent, manifest["splits"][split_name]["shards"]))


def read_shards(paths: list[Path], rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) uint8; ShardError for an unreadable shard or a wrong row count."""
    images = np.empty((sum(rows), *IMAGE_SHAPE), np.uint8)
    labels = np.empty(sum(rows), np.uint8)
    offset = 0
    for path, expected in zip(paths, rows):
        try:
            table = pq.read_table(path, columns=["label", "pixels"])
        except (OSError, pa.ArrowException) as error:
            raise ShardError(f"cannot read shard {path}: {error}; re-run ingest (--refresh ingest)") from error
        n = table.num_rows
        if n != expected:
            raise ShardError(f"shard {path} has {n} rows, its manifest says {expected}")
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images[offset : offset + n] = pixels.reshape(n, *IMAGE_SHAPE)
        labels[offset : offset + n] = table.column("label").to_numpy()
        offset += n
    return images, labels
