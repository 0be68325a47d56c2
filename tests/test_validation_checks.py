"""The shared per-channel pixel statistics and the validate stage's pure checks, on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cifarflow.data.statistics import channel_stats, mean_std, pixel_value_counts
from cifarflow.validation.checks import (
    MIN_DRIFT_IMAGES,
    PSI_FLOOR,
    copies,
    difference_hash,
    drift,
    duplicates_within_classes,
    imbalance_ratio,
    label_out_of_range,
    mismatched_label_names,
    psi,
)


def value_counts(images: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(images[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.int64)


def test_channel_statistics_of_a_known_array_agree_however_they_are_gathered():
    images = np.zeros((2, 1, 2, 3), np.uint8)  # four pixels per channel
    images[..., 0] = [[[0, 255]], [[0, 255]]]  # R: 0, 1, 0, 1 in units of pixel / 255
    images[..., 1] = 51  # G: a constant 0.2
    images[..., 2] = [[[0, 0]], [[0, 255]]]  # B: 0, 0, 0, 1
    mean, std = channel_stats(images)
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (3,)
    np.testing.assert_allclose(mean, [0.5, 0.2, 0.25], rtol=1e-12)
    np.testing.assert_allclose(std, [0.5, 0.0, math.sqrt(0.25 - 0.25**2)], rtol=1e-12, atol=1e-12)
    assert not np.isnan(std).any()  # a constant channel's variance may round below 0: it counts as 0

    np.testing.assert_array_equal(pixel_value_counts(images, chunk_rows=1), value_counts(images))  # chunked
    np.testing.assert_array_equal(mean_std(np.zeros((3, 256), np.int64)), np.zeros((2, 3)))


def test_channel_statistics_match_numpy_on_random_images():
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (images / 255.0).mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, (images / 255.0).std(axis=(0, 1, 2)), rtol=1e-10)


def test_psi_is_zero_for_the_same_histogram_and_known_for_opposite_ends():
    dark, bright = np.zeros((3, 256), np.int64), np.zeros((3, 256), np.int64)
    dark[:, 0], bright[:, 255] = 100, 100  # every pixel in the first bin, or in the last
    assert psi(dark, dark * 3) == 0.0  # shares, not counts
    expected = 2 * (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR)  # two bins swap share 1 and the floor
    assert psi(dark, bright) == pytest.approx(expected, rel=1e-12)
    assert drift(dark, bright, MIN_DRIFT_IMAGES) == pytest.approx(expected, rel=1e-12)
    assert drift(dark, bright, MIN_DRIFT_IMAGES - 1) is None  # too small to judge


def test_label_and_copy_checks_return_what_they_found():
    assert label_out_of_range(np.array([0, 9, 3], np.uint8), 10) is None
    assert label_out_of_range(np.array([1, 12, 10], np.uint8), 10) == 12
    assert label_out_of_range(np.array([0, 3], np.uint8), 3) == 3  # 3 classes: labels 0..2
    assert label_out_of_range(np.empty(0, np.uint8), 2) is None
    names = ["ant", "bee", "wasp"]
    labels = np.array([0, 1, 2, 1], np.uint8)
    assert mismatched_label_names(labels, np.array(["ant", "bee", "wasp", "wasp"], object), names) == 1
    assert copies(["a", "b", "a", "c"], {"a", "c"}) == [0, 2, 3]  # repeats counted
    assert imbalance_ratio(np.array([30, 45, 30])) == 1.5
    assert imbalance_ratio(np.array([0, 7])) == 7.0  # an empty class counts as one image


@pytest.mark.parametrize("side", [8, 16, 31, 64])
def test_the_difference_hash_has_a_bit_per_cell_brighter_than_its_left_neighbour(side):
    ramp = np.broadcast_to(np.linspace(0, 255, side).astype(np.uint8)[None, :, None], (side, side, 3))
    images = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 77)])  # brighter rightwards, darker, flat
    hashes = difference_hash(images)
    assert hashes.dtype == np.uint64 and hashes.shape == (3,)
    assert hashes.tolist() == [2**64 - 1, 0, 0]  # all 64 bits set; none; none (equal is not brighter)
    stripes = np.zeros((side, side, 3), np.uint8)
    stripes[: side // 2] = ramp[: side // 2]  # the top half rises, the bottom half is flat
    assert difference_hash(stripes[None])[0] == 2**64 - 2**32  # the first four rows' bits, most significant first


def test_duplicates_within_classes_are_counted_per_class():
    h = 0x0123_4567_89AB_CDEF
    labels = np.array([0, 0, 0, 1, 1, 0, 0], np.uint8)
    hashes = np.array([h, h ^ 0b11, h, h, h ^ 0b111, h ^ 0b1100, ~h & (2**64 - 1)], np.uint64)
    digests = ["a", "b", "a", "c", "d", "e", "f"]
    exact, near = duplicates_within_classes(labels, hashes, digests)
    assert exact == [(0, 2)]  # position 2 repeats position 0's pixels in class 0
    # 1 is 2 bits from 0, 5 is 2 bits from 0 (4 from 1: chained); 3 has 0's hash in another class, 4 is 3 bits
    # from 3; 6 is 64 bits from all
    assert near == [[0, 1, 5]]
    assert duplicates_within_classes(np.zeros(0, np.uint8), np.zeros(0, np.uint64), []) == ([], [])
