"""The image corruptions (`cifarflow.data.corruptions`) on tiny synthetic images: shape and dtype kept,
deterministic for a seed, each one doing what it says; bad names and bad arrays refused."""

from __future__ import annotations

import numpy as np
import pytest

from cifarflow.data.corruptions import CORRUPTIONS, corrupt


def noise_images(count: int = 4, seed: int = 0, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared difference between horizontal and vertical neighbours: what a blur takes away."""
    values = images.astype(np.float64)
    return float((np.diff(values, axis=1) ** 2).mean() + (np.diff(values, axis=2) ** 2).mean())


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_and_dtype_changes_the_images_and_repeats_for_a_seed(name, side):
    images = noise_images(side=side)
    before = images.copy()
    out = corrupt(images, name, seed=5)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    np.testing.assert_array_equal(images, before)  # the input is left alone
    np.testing.assert_array_equal(corrupt(images, name, seed=5), out)
    assert CORRUPTIONS[name].name == name and CORRUPTIONS[name].severity
    one = corrupt(images[1:2], name, seed=5)  # batches of any size, rectangular images too
    assert one.shape == (1, side, side, 3)
    assert corrupt(np.zeros((2, 8, 12, 3), np.uint8) + 100, name).shape == (2, 8, 12, 3)


def test_brightness_halves_every_value_within_rounding():
    images = noise_images()
    out = corrupt(images, "brightness")
    assert np.abs(out.astype(np.float64) - images / 2).max() <= 0.5
    assert out.mean() == pytest.approx(images.mean() / 2, abs=0.5)
    np.testing.assert_array_equal(corrupt(images, "brightness", seed=1), out)  # no randomness in it


def test_grayscale_makes_the_three_channels_equal_to_the_luma():
    images = noise_images()
    out = corrupt(images, "grayscale")
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    luma = images.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(out[..., 0] - luma).max() <= 1  # Pillow's integer arithmetic rounds


def test_gaussian_noise_has_the_asked_spread_on_mid_gray_and_depends_on_the_seed():
    gray = np.full((4, 32, 32, 3), 128, np.uint8)  # far from 0 and 255: no clipping at σ = 20
    out = corrupt(gray, "gaussian_noise", seed=0)
    difference = out.astype(np.float64) - 128
    assert difference.std() == pytest.approx(20, abs=1.0)
    assert abs(difference.mean()) < 1.0
    assert not np.array_equal(corrupt(gray, "gaussian_noise", seed=1), out)


def test_blur_lowers_high_frequency_energy():
    images = noise_images()
    assert high_frequency_energy(corrupt(images, "blur")) < 0.5 * high_frequency_energy(images)
    flat = np.full((1, 32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(corrupt(flat, "blur"), flat)  # nothing to blur on a flat image


def test_jpeg_at_quality_10_changes_pixels_but_keeps_the_picture():
    rows = np.linspace(0, 255, 32)
    gradient = np.repeat(np.stack([np.add.outer(rows, rows) / 2] * 3, axis=-1)[None], 2, axis=0).astype(np.uint8)
    out = corrupt(gradient, "jpeg")
    assert not np.array_equal(out, gradient)
    assert np.abs(out.astype(np.float64) - gradient).mean() < 10  # lossy, not garbage


def test_unknown_names_and_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="fog") as error:
        corrupt(noise_images(1), "fog")
    assert all(name in str(error.value) for name in CORRUPTIONS)
    for bad in (
        noise_images(1).astype(np.float32),  # not uint8
        np.zeros((1, 32, 32), np.uint8),  # no channels
        np.zeros((32, 32, 3), np.uint8),  # one image, not a batch
        np.zeros((1, 32, 32, 4), np.uint8),  # RGBA
    ):
        with pytest.raises(ValueError, match="uint8"):
            corrupt(bad, "brightness")


def test_upside_down_and_swap_channels_are_exact_and_contrast_pulls_toward_the_mean():
    pixels = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(corrupt(pixels, "upside_down")[:, -1, ::-1], pixels[:, 0])  # first row → last
    np.testing.assert_array_equal(corrupt(pixels, "swap_channels"), pixels[..., [2, 1, 0]])
    lowered = corrupt(pixels, "contrast").astype(float)
    assert lowered.std(axis=(1, 2, 3)).max() < 0.6 * pixels.astype(float).std(axis=(1, 2, 3)).min()


def test_pixelate_makes_blocks_of_the_scale():
    images = noise_images(2)
    out = corrupt(images, "pixelate")  # ½ size: 2×2 blocks of one colour (the box mean of the block)
    blocks = out.reshape(2, 16, 2, 16, 2, 3)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    means = images.reshape(2, 16, 2, 16, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(blocks[:, :, 0, :, 0].astype(float) - means).max() <= 1
