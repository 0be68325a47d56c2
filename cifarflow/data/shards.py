"""Parquet shards of the raw images (`shard_schema(side)`; `pixels`: side·side·3 uint8 HWC) and the manifest that pins
them: the data set's classes, image size, source and split, each shard's rows and sha256, and `dataset_sha256` over
them, which downstream cache keys use."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.archive import Split
from cifarflow.errors import ShardError
from cifarflow.files import atomic_path, file_digest, read_json, text_digest
from cifarflow.intake.images import resize_pixels

MANIFEST_VERSION = 2
ROWS_PER_SHARD = 10_000
ROW_GROUP_ROWS = 1_000  # Parquet row groups: a 10,000-row shard writes 3× faster in half the memory than as one group
SPLITS = ("train", "test")


def shard_schema(side: int) -> pa.Schema:
    """The shards' columns for side × side images (`pixels`: side·side·3 uint8 in row, column, RGB order)."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("filename", pa.string(), nullable=False),
            pa.field("label", pa.uint8(), nullable=False),
            pa.field("label_name", pa.dictionary(pa.int16(), pa.string()), nullable=False),
            pa.field("pixels", pa.list_(pa.uint8(), side * side * 3), nullable=False),
        ]
    )


def rows_table(
    image_ids: list[str], filenames: list[str], labels: np.ndarray, label_names: list[str], images: np.ndarray
) -> pa.Table:
    """Images (N, S, S, 3) uint8 and their facts as an Arrow table in `shard_schema(S)` (pixels zero-copy)."""
    labels, side = np.asarray(labels), images.shape[1]
    pixels = pa.array(np.ascontiguousarray(images).reshape(-1))
    return pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "filename": pa.array(filenames, pa.string()),
            "label": pa.array(labels, pa.uint8()),
            "label_name": pa.DictionaryArray.from_arrays(
                pa.array(labels.astype(np.int16)), pa.array(label_names, pa.string())
            ),
            "pixels": pa.FixedSizeListArray.from_arrays(pixels, side * side * 3),
        },
        schema=shard_schema(side),
    )


def write_split_shards(
    split_name: str,
    split: Split,
    label_names: list[str],
    out_dir: Path,
    side: int,
    rows_per_shard: int = ROWS_PER_SHARD,
) -> list[dict[str, Any]]:
    """Write `part-NNNNN.parquet` files of (side, side, 3) images (resized by the intake's rule, a shard at a time,
    when the split's are another size); return their manifest entries."""
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
            resized(split.images[start:stop], side),
        )
        entries.append(write_shard(table, path, f"{split_name}/{path.name}"))
    return entries


def resized(images: np.ndarray, side: int) -> np.ndarray:
    """(N ≥ 1, H, W, 3) uint8 → (N, side, side, 3) uint8 by `resize_pixels` (the images themselves at that size)."""
    if images.shape[1:3] == (side, side):
        return images
    return np.stack([resize_pixels(image, side) for image in images])


def write_shard(table: pa.Table, path: Path, name: str) -> dict[str, Any]:
    """Write `table` to `path` as zstd Parquet, atomically; return its manifest entry, its path given as `name`."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return {"path": name, "rows": table.num_rows, "sha256": file_digest(path), "bytes": path.stat().st_size}


def build_manifest(
    shards: dict[str, list[dict[str, Any]]],
    label_names: list[str],
    source: dict[str, Any],
    *,
    image_size: int,
    split: dict[str, Any],
    skipped: list[dict[str, str]] = (),
) -> dict[str, Any]:
    """The manifest (version 2) of `shards` (split → `write_shard` entries); `dataset_sha256` over the classes, the
    image size and the shards' digests. `split`: how the test split was made; `skipped`: {path, reason} per file."""
    dataset_sha256 = text_digest(label_names, image_size, {s: [e["sha256"] for e in shards[s]] for s in shards})
    return {
        "version": MANIFEST_VERSION,
        "dataset_sha256": dataset_sha256,
        "label_names": label_names,
        "image_size": image_size,
        "schema": shard_schema(image_size).to_string(show_schema_metadata=False),
        "source": source,
        "split": split,
        "skipped": list(skipped),
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
    """Identity of one image: sha256 of its (S, S, 3) uint8 pixels (what duplicate checks compare)."""
    return hashlib.sha256(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()


def shard_files(root: Path, entries: list[dict[str, Any]]) -> tuple[list[Path], list[int]]:
    """`read_shards`' arguments for manifest shard entries, paths resolved against `root`."""
    return [Path(root) / e["path"] for e in entries], [e["rows"] for e in entries]


def read_split(manifest_path: Path, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split's images (N, S, S, 3) uint8 and labels (N,) uint8 from its shards."""
    manifest = verify_manifest(manifest_path)
    return read_shards(*shard_files(manifest_path.parent, manifest["splits"][split_name]["shards"]))


def read_shards(paths: list[Path], rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, 3) uint8, S from the shards' pixel lists ((0, 0, 0, 3) for no shards), and labels (N,) uint8;
    ShardError for an unreadable shard, a wrong row count, or shards of different image sizes."""
    images, labels, offset = None, np.empty(sum(rows), np.uint8), 0
    for path, expected in zip(paths, rows):
        try:
            table = pq.read_table(path, columns=["label", "pixels"])
        except (OSError, pa.ArrowException) as error:
            raise ShardError(f"cannot read shard {path}: {error}; re-run ingest (--refresh ingest)") from error
        n, side = table.num_rows, pixel_side(table.schema.field("pixels").type, path)
        if n != expected:
            raise ShardError(f"shard {path} has {n} rows, its manifest says {expected}")
        images = np.empty((sum(rows), side, side, 3), np.uint8) if images is None else images
        if images.shape[1] != side:
            raise ShardError(
                f"shard {path} holds {side}×{side} images, the shards read before it {images.shape[1]}×"
                f"{images.shape[2]}: they are not one data set; re-run ingest (--refresh ingest)"
            )
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images[offset : offset + n] = pixels.reshape(n, side, side, 3)
        labels[offset : offset + n] = table.column("label").to_numpy()
        offset += n
    return (np.empty((0, 0, 0, 3), np.uint8) if images is None else images), labels


def pixel_side(kind: pa.DataType, path: Path) -> int:
    """S of a `pixels` column of fixed-size lists of S·S·3 uint8; ShardError for any other type."""
    size = kind.list_size if isinstance(kind, pa.FixedSizeListType) else 0
    side = math.isqrt(size // 3)
    if size == 0 or side * side * 3 != size:
        raise ShardError(f"shard {path}: pixels are {kind}, not S·S·3 uint8 lists; re-run ingest (--refresh ingest)")
    return side


def data_set_words(label_names, image_size: int, shown: int = 10) -> str:
    """'3 classes (ant, bee, wasp) at 64×64' (past `shown` names, the rest as '…')."""
    names = ", ".join(list(label_names)[:shown]) + (", …" if len(label_names) > shown else "")
    return f"{len(label_names)} classes ({names}) at {image_size}×{image_size}"


def describe_split(split: dict[str, Any]) -> str:
    """How a manifest's test split was made, in words."""
    if split.get("method") == "held-out":
        return f"held out {split['test_fraction']:.3g} of each class as test (split seed {split['split_seed']})"
    return "as given by the source (its own train and test images)"
