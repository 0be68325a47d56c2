"""The fitted transform, one-hot encoding and the training-ready arrays preprocess writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifarflow.config import PipelineConfig
from cifarflow.data.dataset_versions import current_version
from cifarflow.data.ingest import ingest_source
from cifarflow.data.transform import (
    Normalization,
    build_features,
    channel_stats,
    find_features,
    fit_normalization,
    load_split,
    one_hot,
    verify_features,
)
from cifarflow.errors import FeatureError
from cifarflow.layout import DataLayout
from cifarflow.validation.validate import validate_dataset


def test_unit_normalization_maps_to_the_unit_interval():
    fitted = fit_normalization(np.zeros((1, 1, 1, 3), np.uint8), "unit")
    out = fitted.apply(np.array([[[[0, 128, 255]]]], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0.0, 128 / 255, 1.0], rtol=1e-6)


def test_standardize_is_fitted_to_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    fitted = fit_normalization(images, "standardize")
    np.testing.assert_allclose(fitted.mean, channel_stats(images)[0])
    out = fitted.apply(images)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, atol=1e-4)
    assert Normalization.from_json(fitted.to_json()) == fitted
    with pytest.raises(ValueError, match="unknown normalization"):
        fit_normalization(images, "zscore")


def test_one_hot():
    encoded = one_hot(np.array([0, 3, 9]), 10)
    assert encoded.shape == (3, 10) and encoded.dtype == np.uint8
    np.testing.assert_array_equal(encoded.argmax(1), [0, 3, 9])
    assert encoded.sum() == 3
    with pytest.raises(ValueError, match="0..9"):
        one_hot(np.array([10]), 10)


@pytest.mark.parametrize("normalization", ["unit", "standardize"])
def test_build_features_writes_compact_training_ready_arrays(synthetic_archive, tmp_path, normalization):
    layout = DataLayout(tmp_path / "data")
    ingest_source(PipelineConfig(source=str(synthetic_archive), data_dir=layout.root, rows_per_shard=100))
    validated = validate_dataset(layout, current_version(layout), tmp_path / "validated")
    features = build_features(validated.dataset_path, layout.shard_manifest, tmp_path / "features", normalization)
    pixels = load_split(features.directory, "train", "pixels")
    onehot = load_split(features.directory, "train", "onehot")
    assert isinstance(pixels, np.memmap) and pixels.shape == (300, 32, 32, 3) and pixels.dtype == np.uint8
    assert onehot.shape == (300, 10) and onehot.dtype == np.uint8
    np.testing.assert_array_equal(onehot.argmax(1), load_split(features.directory, "train", "labels"))
    assert sorted(p.name for p in features.directory.glob("*.npy")) == [
        f"{kind}_{split}.npy" for kind in ("labels", "onehot", "pixels") for split in ("test", "train")
    ]  # no float copy of the data set
    assert features.normalization.kind == normalization
    if normalization == "standardize":  # fitted on train only
        np.testing.assert_allclose(features.normalization.apply(pixels).mean(axis=(0, 1, 2)), 0, atol=1e-4)
    assert features.label_names[0] == "airplane" and features.image_size == 32
    manifest = json.loads(layout.shard_manifest.read_text())
    assert features.dataset == {
        "dataset_sha256": manifest["dataset_sha256"],
        "source": {"kind": "cifar-archive", "uri": manifest["source"]["uri"], "sha256": manifest["source"]["sha256"]},
        "split": manifest["split"],
    }
    assert verify_features(features.directory) == features
    (features.directory / "onehot_test.npy").write_bytes(b"garbage")
    with pytest.raises(FeatureError, match="onehot_test.npy is missing or changed"):
        verify_features(features.directory)
    assert find_features(features.directory) is None
