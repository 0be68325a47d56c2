"""Parquet shards: round trip, manifest, no needless rewrites, and nothing half-written."""

from __future__ import annotations

import errno
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from cifarflow.data.archive import read_archive
from cifarflow.data.ingest import find_shards, ingest_archive
from cifarflow.data.shards import SCHEMA, read_split, verify_manifest
from cifarflow.errors import ShardError, StorageError
from cifarflow.layout import DataLayout


def test_round_trip_keeps_pixels_labels_and_ids(synthetic_archive, tmp_path):
    layout = DataLayout(tmp_path / "data")
    result = ingest_archive(str(synthetic_archive), layout, rows_per_shard=100)
    splits, names = read_archive(synthetic_archive)
    assert result.rows == {"train": 300, "test": 100}
    for split in ("train", "test"):
        images, labels = read_split(layout.shard_manifest, split)
        np.testing.assert_array_equal(images, splits[split].images)
        np.testing.assert_array_equal(labels, splits[split].labels)
    table = pq.read_table(layout.split_dir("train") / "part-00001.parquet")
    assert table.schema.equals(SCHEMA)
    assert table.column("image_id")[0].as_py() == "train-00100"
    assert table.column("label_name")[0].as_py() == names[table.column("label")[0].as_py()]
    manifest = verify_manifest(layout.shard_manifest)
    assert [e["rows"] for e in manifest["splits"]["train"]["shards"]] == [100, 100, 100]
    assert manifest["source"]["sha256"] == result.source_sha256
    assert manifest["label_names"] == names


def test_shards_are_found_only_for_their_key(synthetic_archive, tmp_path):
    layout = DataLayout(tmp_path / "data")
    first = ingest_archive(str(synthetic_archive), layout, rows_per_shard=100, cache_key="k1")
    assert find_shards(layout, "k1") == first
    assert find_shards(layout, "k2") is None  # made by another source, parameters or code
    second = ingest_archive(str(synthetic_archive), layout, rows_per_shard=100, cache_key="k1")
    assert first.dataset_sha256 == second.dataset_sha256  # deterministic


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_shard_is_detected(synthetic_archive, tmp_path, damage):
    layout = DataLayout(tmp_path / "data")
    ingest_archive(str(synthetic_archive), layout, rows_per_shard=100, cache_key="k")
    shard = layout.split_dir("train") / "part-00002.parquet"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:500])
    elif damage == "edit":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    with pytest.raises(ShardError, match="part-00002.parquet.*(--refresh ingest|re-run ingest)"):
        read_split(layout.shard_manifest, "train")
    assert find_shards(layout, "k") is None  # so the runner re-ingests rather than trusting the manifest
    ingest_archive(str(synthetic_archive), layout, rows_per_shard=100, cache_key="k")
    assert find_shards(layout, "k") is not None


def test_disk_full_leaves_previous_shards_untouched(synthetic_archive, tmp_path, monkeypatch):
    layout = DataLayout(tmp_path / "data")
    ingest_archive(str(synthetic_archive), layout, rows_per_shard=100)
    before = {p.relative_to(layout.root): p.read_bytes() for p in layout.parquet.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real_write = pq.write_table

    def write_until_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_until_full)
    with pytest.raises(StorageError, match="disk is full.*nothing half-written"):
        ingest_archive(str(synthetic_archive), layout, rows_per_shard=50)  # new shard size: must rewrite
    after = {p.relative_to(layout.root): p.read_bytes() for p in layout.parquet.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in layout.root.iterdir() if p.name.endswith(".part")]
