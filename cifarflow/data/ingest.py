"""Stage 1, ingest: archive → verified Parquet shards + manifest."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from cifarflow.data.archive import fetch_archive, read_archive
from cifarflow.data.shards import ROWS_PER_SHARD, SPLITS, build_manifest, verify_manifest, write_split_shards
from cifarflow.errors import ShardError
from cifarflow.files import atomic_directory, read_json, write_json
from cifarflow.layout import DataLayout
from cifarflow.outputs import StageOutput, read_whole


@dataclass(frozen=True)
class IngestResult(StageOutput):
    manifest_path: Path
    dataset_sha256: str
    source_sha256: str
    rows: dict[str, int]

    location = property(attrgetter("manifest_path"))

    fingerprint = property(lambda self: f"{self.dataset_sha256}:{self.source_sha256}")


def result_from_manifest(manifest_path: Path, manifest: dict) -> IngestResult:
    rows = {s: manifest["splits"][s]["rows"] for s in SPLITS}
    return IngestResult(manifest_path, manifest["dataset_sha256"], manifest["source"]["sha256"], rows)


def ingest_archive(
    source: str,
    layout: DataLayout,
    sha256: str | None = None,
    md5: str | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    cache_key: str | None = None,
    log=print,
) -> IngestResult:
    """Fetch and verify the archive, then write the shards and their manifest (recording `cache_key`)."""
    archive_path, source_sha256 = fetch_archive(source, layout.raw, sha256=sha256, md5=md5)
    log(f"reading {archive_path}")
    splits, label_names = read_archive(archive_path)
    source_info = {"uri": str(source), "path": str(archive_path), "sha256": source_sha256}
    source_info["bytes"] = archive_path.stat().st_size
    # one rename swaps the whole parquet/ folder: readers never see old and new shards mixed
    with atomic_directory(layout.parquet) as staging:
        shards = {}
        for split in SPLITS:
            shards[split] = write_split_shards(split, splits.pop(split), label_names, staging / split, rows_per_shard)
            log(f"wrote {len(shards[split])} {split} shards")
        facts = {"rows_per_shard": rows_per_shard, "cache_key": cache_key}
        manifest = build_manifest(shards, label_names, source_info) | facts
        write_json(staging / "manifest.json", manifest)
    return result_from_manifest(layout.shard_manifest, manifest)


def find_shards(layout: DataLayout, cache_key: str) -> IngestResult | None:
    """The shards on disk, if they were made for this cache key and every shard still verifies."""

    def read() -> IngestResult | None:
        if read_json(layout.shard_manifest).get("cache_key") != cache_key:
            return None
        return result_from_manifest(layout.shard_manifest, verify_manifest(layout.shard_manifest))

    return read_whole(read, ShardError)
