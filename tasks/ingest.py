"""Stage 1, ingest: archive → verified Parquet shards + manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.archive import fetch_archive, read_archive
from tasks.errors import ShardError
from tasks.files import atomic_directory, read_json, write_json
from tasks.layout import DataLayout
from tasks.shards import SPLITS, build_manifest, verify_manifest, write_split_shards


@dataclass(frozen=True)
class IngestResult:
    manifest_path: Path
    dataset_sha256: str
    source_sha256: str
    rows: dict[str, int]
    rewritten: bool  # False when an unchanged source found its shards already in place

    @property
    def fingerprint(self) -> str:
        return f"{self.dataset_sha256}:{self.source_sha256}"


def current_shards(layout: DataLayout, source_sha256: str, rows_per_shard: int, cache_key: str | None) -> dict | None:
    """The existing manifest if it was made from this very archive (by the same code, when a cache
    key is given) and every shard still verifies."""
    if not layout.shard_manifest.is_file():
        return None
    try:
        manifest = read_json(layout.shard_manifest)
    except ValueError:
        return None
    made_by = (manifest.get("source", {}).get("sha256"), manifest.get("rows_per_shard"), manifest.get("cache_key"))
    if made_by != (source_sha256, rows_per_shard, cache_key):
        return None
    try:
        return verify_manifest(layout.shard_manifest)
    except ShardError:
        return None


def ingest_archive(
    source: str,
    layout: DataLayout,
    sha256: str | None = None,
    md5: str | None = None,
    rows_per_shard: int = 10_000,
    cache_key: str | None = None,
    log=print,
) -> IngestResult:
    """Fetch and verify the archive, then (re)write the shards only if they are not already current."""
    archive_path, source_sha256 = fetch_archive(source, layout.raw, sha256=sha256, md5=md5)
    manifest = current_shards(layout, source_sha256, rows_per_shard, cache_key)
    rewritten = manifest is None
    if manifest is None:
        log(f"reading {archive_path}")
        splits, label_names = read_archive(archive_path)
        source_info = {
            "uri": str(source),
            "path": str(archive_path),
            "sha256": source_sha256,
            "bytes": archive_path.stat().st_size,
        }
        # The whole parquet/ directory is staged and swapped in one rename: readers never see
        # a mix of old and new shards, and a failure leaves the previous shards untouched.
        with atomic_directory(layout.parquet) as staging:
            shards = {}
            for split in SPLITS:
                shards[split] = write_split_shards(
                    split, splits.pop(split), label_names, staging / split, rows_per_shard
                )
                log(f"wrote {len(shards[split])} {split} shards")
            manifest = build_manifest(shards, label_names, source_info) | {
                "rows_per_shard": rows_per_shard,
                "cache_key": cache_key,
            }
            write_json(staging / "manifest.json", manifest)
    else:
        log(
            f"shards in {layout.parquet} already match {archive_path} (sha256 {source_sha256[:12]}…); nothing rewritten"
        )
    return IngestResult(
        manifest_path=layout.shard_manifest,
        dataset_sha256=manifest["dataset_sha256"],
        source_sha256=source_sha256,
        rows={s: manifest["splits"][s]["rows"] for s in SPLITS},
        rewritten=rewritten,
    )
