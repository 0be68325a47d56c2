"""Per-channel pixel statistics: the one definition of a colour channel's mean and standard deviation
that preprocess (fitting the normalization) and validation (each part's row in validation.json) share.

Both work on x = pixel / 255 (0..1) in float64 and gather the same sums per channel: the number of
pixels n, Σx and Σx². `ChannelSums.mean_std` turns them into mean = Σx / n and the population
std = √(Σx²/n − mean²). The stages gather the sums from what each already holds: preprocess from the
training images, in row chunks so that no float copy of the split exists; validation from its count
of each of the 256 pixel values per channel, which it keeps for the drift histogram. Each way keeps
the order of summation it has always had, so the fitted normalization and the statistics are the
same to the last bit as before this module existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 5_000  # images summed at a time: 5,000 × 32 × 32 × 3 float64 is 123 MB


@dataclass(frozen=True)
class ChannelSums:
    """Sums over the pixels of each colour channel; every field has shape (3,), in R, G, B order."""

    count: np.ndarray  # int64: pixels per channel
    total: np.ndarray  # float64: Σ pixel / 255
    squares: np.ndarray  # float64: Σ (pixel / 255)²

    @classmethod
    def of_images(cls, images: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> ChannelSums:
        """Sums over (N, H, W, 3) uint8 images (an array or a memory map), `chunk_rows` images at a time."""
        total = np.zeros(3)
        squares = np.zeros(3)
        for start in range(0, len(images), chunk_rows):
            chunk = images[start : start + chunk_rows].astype(np.float64) / 255.0
            total += chunk.sum(axis=(0, 1, 2))
            squares += np.square(chunk).sum(axis=(0, 1, 2))
        return cls(np.full(3, len(images) * images.shape[1] * images.shape[2]), total, squares)

    @classmethod
    def of_value_counts(cls, values: np.ndarray) -> ChannelSums:
        """Sums from (3, 256) int64 value counts: `values[c, v]` pixels of channel c have the value v."""
        levels = np.arange(256) / 255.0
        return cls(values.sum(axis=1), (values * levels).sum(axis=1), (values * levels**2).sum(axis=1))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), each (3,) float64 in units of pixel / 255. The std is the
        population one (divided by n). A channel without pixels has mean 0 and std 0; a variance that
        rounding makes a hair below 0 (a constant channel) counts as 0."""
        count = np.maximum(self.count, 1)
        mean = self.total / count
        return mean, np.sqrt(np.maximum(self.squares / count - mean**2, 0))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std), each (3,) float64 in units of pixel / 255, of (N, H, W, 3) uint8 images."""
    return ChannelSums.of_images(images).mean_std()


def pixel_value_counts(images: np.ndarray) -> np.ndarray:
    """(3, 256) int64: `counts[c, v]` is how many pixels of channel c have the value v, over (N, H, W, 3)
    uint8 images (what the drift histograms are made of: `cifarflow.validation.checks.psi`)."""
    flat = np.asarray(images, np.uint8).reshape(-1, 3)
    return np.stack([np.bincount(flat[:, channel], minlength=256) for channel in range(3)]).astype(np.int64)
