"""Normalization, one-hot encoding and the feature files the trainer memory-maps."""

from __future__ import annotations

import numpy as np
import pytest

from cifarflow.data.ingest import ingest_archive
from cifarflow.data.transform import build_features, channel_stats, load_split, normalize, one_hot, verify_features
from cifarflow.errors import ShardError
from cifarflow.layout import DataLayout


def test_normalize_maps_to_unit_interval():
    images = np.array([[[[0, 128, 255]]]], np.uint8)
    out = normalize(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0.0, 128 / 255, 1.0], rtol=1e-6)


def test_standardize_gives_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    out = normalize(images, mean, std)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_one_hot():
    encoded = one_hot(np.array([0, 3, 9]))
    assert encoded.shape == (3, 10) and encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded.argmax(1), [0, 3, 9])
    assert encoded.sum() == 3
    with pytest.raises(ValueError, match="0..9"):
        one_hot(np.array([10]))


@pytest.mark.parametrize("normalization", ["unit", "standardize"])
def test_build_features_writes_memory_mappable_arrays(synthetic_archive, tmp_path, normalization):
    layout = DataLayout(tmp_path / "data")
    result = ingest_archive(str(synthetic_archive), layout, rows_per_shard=100)
    features = build_features(result.manifest_path, tmp_path / "features", normalization)
    x = load_split(features.directory, "train", "x")
    y = load_split(features.directory, "train", "y")
    assert isinstance(x, np.memmap) and x.shape == (300, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (300, 10)
    np.testing.assert_array_equal(y.argmax(1), load_split(features.directory, "train", "labels"))
    if normalization == "unit":
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_allclose(x, load_split(features.directory, "train", "pixels") / 255.0, rtol=1e-6)
    else:
        np.testing.assert_allclose(np.asarray(x).mean(axis=(0, 1, 2)), 0, atol=1e-4)
    assert features.label_names[0] == "airplane"
    meta = verify_features(features.directory)
    assert meta["features_sha256"] == features.features_sha256
    (features.directory / "y_test.npy").write_bytes(b"garbage")
    with pytest.raises(ShardError, match="y_test.npy is missing or changed"):
        verify_features(features.directory)
