"""Per-channel pixel statistics: value counts, and the mean and population std of pixel / 255 (float64)."""

from __future__ import annotations

import numpy as np

CHUNK_ROWS = 5_000  # images counted at a time: bounds the int64 copy `np.bincount` makes (123 MB)


def pixel_value_counts(images: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """(3, 256) int64: `counts[c, v]` pixels of channel c have the value v, over (N, H, W, 3) uint8 images."""
    counts = np.zeros((3, 256), np.int64)
    for start in range(0, len(images), chunk_rows):
        flat = np.asarray(images[start : start + chunk_rows], np.uint8).reshape(-1, 3)
        counts += np.stack([np.bincount(flat[:, channel], minlength=256) for channel in range(3)])
    return counts


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std), each (3,) float64 in pixel / 255, from (3, 256) value counts (no pixels: 0, 0)."""
    levels = np.arange(256) / 255.0
    count = np.maximum(values.sum(axis=1), 1)
    mean = (values * levels).sum(axis=1) / count
    return mean, np.sqrt(np.maximum((values * levels**2).sum(axis=1) / count - mean**2, 0))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return mean_std(pixel_value_counts(images))
