"""Archive parsing and verification: the official layout, and every way it can be bad."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from cifarflow.data.archive import fetch_archive, read_archive, read_label_names, verify_checksums
from cifarflow.errors import ArchiveError
from tests.synthetic import CLASSES, archive_members, batch_bytes, write_archive


def test_reads_official_layout_into_hwc_uint8(synthetic_archive):
    splits, names = read_archive(synthetic_archive)
    assert names == CLASSES
    assert splits["train"].images.shape == (300, 32, 32, 3) and splits["train"].images.dtype == np.uint8
    assert splits["test"].images.shape == (100, 32, 32, 3)
    assert len(splits["train"].filenames) == 300 and splits["train"].filenames[0] == "img_1_0000.png"
    assert splits["train"].labels.max() <= 9


def test_pixel_order_is_converted_from_chw(tmp_path):
    members = archive_members(per_batch=2, test_size=2)
    data = np.zeros((2, 3072), np.uint8)
    data[0, :1024] = 255  # red plane of image 0
    members["test_batch"] = batch_bytes("t", np.array([0, 1]), data, ["a.png", "b.png"])
    splits, _ = read_archive(write_archive(tmp_path / "a.tar.gz", members))
    image = splits["test"].images[0]
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()


def test_truncated_archive_is_rejected(synthetic_archive, tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(synthetic_archive.read_bytes()[: synthetic_archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated|not a readable"):
        read_archive(truncated)


def test_not_a_gzip_or_tar_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"<html>not found</html>")
    with pytest.raises(ArchiveError, match="not a readable tar.gz"):
        read_archive(bogus)
    plain_gzip = tmp_path / "plain.tar.gz"
    plain_gzip.write_bytes(gzip.compress(b"just text, no tar inside" * 100))
    with pytest.raises(ArchiveError):
        read_archive(plain_gzip)


def test_missing_batch_is_named(tmp_path):
    members = archive_members(per_batch=4, test_size=4)
    del members["data_batch_3"]
    with pytest.raises(ArchiveError, match="missing cifar-10-batches-py/data_batch_3"):
        read_archive(write_archive(tmp_path / "a.tar.gz", members))


def test_wrong_shape_is_rejected(tmp_path):
    members = archive_members(per_batch=4, test_size=4)
    members["data_batch_2"] = batch_bytes("b", np.zeros(4, int), np.zeros((4, 1000), np.uint8), ["x"] * 4)
    with pytest.raises(ArchiveError, match=r"data_batch_2: data has shape \(4, 1000\)"):
        read_archive(write_archive(tmp_path / "a.tar.gz", members))


def test_labels_outside_range_are_rejected(tmp_path):
    members = archive_members(per_batch=4, test_size=4)
    members["test_batch"] = batch_bytes("t", np.array([0, 1, 2, 12]), np.zeros((4, 3072), np.uint8), ["x"] * 4)
    with pytest.raises(ArchiveError, match=r"labels span 0..12, expected 0..9"):
        read_archive(write_archive(tmp_path / "a.tar.gz", members))


def test_pickles_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    members = archive_members(per_batch=4, test_size=4)
    members["batches.meta"] = pickle.dumps(Exploit(), protocol=2)
    with pytest.raises(ArchiveError, match="refusing to unpickle"):
        read_archive(write_archive(tmp_path / "a.tar.gz", members))


def test_checksums_are_verified(synthetic_archive):
    sha256 = hashlib.sha256(synthetic_archive.read_bytes()).hexdigest()
    md5 = hashlib.md5(synthetic_archive.read_bytes()).hexdigest()
    assert verify_checksums(synthetic_archive, sha256=sha256, md5=md5) == sha256
    with pytest.raises(ArchiveError, match="sha256 is .* expected 0000"):
        verify_checksums(synthetic_archive, sha256="0" * 64)
    with pytest.raises(ArchiveError, match="md5 is .* expected ffff"):
        verify_checksums(synthetic_archive, md5="f" * 32)


def test_fetch_accepts_path_and_file_url(synthetic_archive, tmp_path):
    by_path, sha = fetch_archive(str(synthetic_archive), tmp_path / "raw")
    by_url, sha_url = fetch_archive(synthetic_archive.as_uri(), tmp_path / "raw")
    assert by_path == by_url == synthetic_archive and sha == sha_url
    with pytest.raises(ArchiveError, match="not found"):
        fetch_archive(str(tmp_path / "nope.tar.gz"), tmp_path / "raw")


def test_the_class_names_are_read_without_the_images(synthetic_archive, tmp_path):
    assert read_label_names(synthetic_archive) == CLASSES
    members = archive_members(per_batch=4, test_size=4)
    del members["batches.meta"]
    with pytest.raises(ArchiveError, match="missing cifar-10-batches-py/batches.meta"):
        read_label_names(write_archive(tmp_path / "a.tar.gz", members))
