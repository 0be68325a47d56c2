"""Parquet shards: round trip, manifest, no needless rewrites, and nothing half-written."""

from __future__ import annotations

import errno
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from cifarflow.config import PipelineConfig
from cifarflow.data.archive import read_archive
from cifarflow.data.ingest import find_shards, ingest_source
from cifarflow.data.shards import read_shards, read_split, shard_schema, verify_manifest
from cifarflow.errors import ShardError, StorageError
from cifarflow.files import text_digest
from cifarflow.intake.images import resize_pixels
from cifarflow.layout import DataLayout
from tests.synthetic import CLASSES


def ingest(archive, layout: DataLayout, cache_key: str | None = None, **settings):
    """The ingest of the CIFAR-format `archive` into `layout` (100 rows a shard unless `settings` say otherwise)."""
    settings = {"rows_per_shard": 100} | settings
    return ingest_source(PipelineConfig(source=str(archive), data_dir=layout.root, **settings), cache_key=cache_key)


def test_round_trip_keeps_pixels_labels_and_ids(synthetic_archive, tmp_path):
    layout = DataLayout(tmp_path / "data")
    result = ingest(synthetic_archive, layout)
    splits, names = read_archive(synthetic_archive)
    assert result.rows == {"train": 300, "test": 100}
    for split in ("train", "test"):
        images, labels = read_split(layout.shard_manifest, split)
        np.testing.assert_array_equal(images, splits[split].images)
        np.testing.assert_array_equal(labels, splits[split].labels)
    table = pq.read_table(layout.split_dir("train") / "part-00001.parquet")
    assert table.schema.equals(shard_schema(32))
    assert table.column("image_id")[0].as_py() == "train-00100"
    assert table.column("label_name")[0].as_py() == names[table.column("label")[0].as_py()]
    manifest = verify_manifest(layout.shard_manifest)
    assert [e["rows"] for e in manifest["splits"]["train"]["shards"]] == [100, 100, 100]
    assert manifest["source"]["sha256"] == result.source_sha256
    assert manifest["label_names"] == names


def test_shards_are_found_only_for_their_key(synthetic_archive, tmp_path):
    layout = DataLayout(tmp_path / "data")
    first = ingest(synthetic_archive, layout, cache_key="k1")
    assert find_shards(layout, "k1") == first
    assert find_shards(layout, "k2") is None  # made by another source, parameters or code
    second = ingest(synthetic_archive, layout, cache_key="k1")
    assert first.dataset_sha256 == second.dataset_sha256  # deterministic


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_shard_is_detected(synthetic_archive, tmp_path, damage):
    layout = DataLayout(tmp_path / "data")
    ingest(synthetic_archive, layout, cache_key="k")
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
    ingest(synthetic_archive, layout, cache_key="k")
    assert find_shards(layout, "k") is not None


def test_disk_full_leaves_previous_shards_untouched(synthetic_archive, tmp_path, monkeypatch):
    layout = DataLayout(tmp_path / "data")
    ingest(synthetic_archive, layout)
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
        ingest(synthetic_archive, layout, rows_per_shard=50)  # new shard size: must rewrite
    after = {p.relative_to(layout.root): p.read_bytes() for p in layout.parquet.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in layout.root.iterdir() if p.name.endswith(".part")]


def test_the_manifest_records_the_data_set_its_source_and_split(synthetic_archive, tmp_path):
    layout = DataLayout(tmp_path / "data")
    result = ingest(synthetic_archive, layout)
    manifest = verify_manifest(layout.shard_manifest)
    assert manifest["version"] == 2 and manifest["image_size"] == 32 == result.image_size
    assert manifest["label_names"] == CLASSES == result.label_names
    assert manifest["source"]["kind"] == "cifar-archive" and manifest["source"]["uri"] == str(synthetic_archive)
    assert manifest["split"] == {"method": "given"} and manifest["skipped"] == []
    shard_digests = {s: [e["sha256"] for e in manifest["splits"][s]["shards"]] for s in ("train", "test")}
    assert manifest["dataset_sha256"] == text_digest(CLASSES, 32, shard_digests)  # classes and size in the identity


def test_image_size_64_resizes_the_archive_by_the_intake_rule(synthetic_archive, tmp_path):
    """At --image-size 64 the archive's 32×32 images become 64×64 shards, each the one resize rule's output."""
    layout = DataLayout(tmp_path / "data")
    result = ingest(synthetic_archive, layout, image_size=64)
    splits, _ = read_archive(synthetic_archive)
    images, labels = read_split(layout.shard_manifest, "test")
    assert images.shape == (100, 64, 64, 3) and images.dtype == np.uint8 and result.image_size == 64
    np.testing.assert_array_equal(labels, splits["test"].labels)
    np.testing.assert_array_equal(images[7], resize_pixels(splits["test"].images[7], 64))
    table = pq.read_table(layout.split_dir("train") / "part-00000.parquet")
    assert table.schema.equals(shard_schema(64))
    assert verify_manifest(layout.shard_manifest)["image_size"] == 64


def test_shards_of_two_image_sizes_are_not_read_as_one(synthetic_archive, tmp_path):
    small, large = DataLayout(tmp_path / "small"), DataLayout(tmp_path / "large")
    ingest(synthetic_archive, small)
    ingest(synthetic_archive, large, image_size=48)
    paths = [small.split_dir("test") / "part-00000.parquet", large.split_dir("test") / "part-00000.parquet"]
    assert read_shards(paths[1:], [100])[0].shape == (100, 48, 48, 3)
    with pytest.raises(ShardError, match=r"holds 48×48 images, the shards read before it 32×32"):
        read_shards(paths, [100, 100])
