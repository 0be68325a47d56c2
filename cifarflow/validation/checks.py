"""The validate stage's checks as pure functions returning what they measured."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cifarflow.data.archive import NUM_CLASSES

IMBALANCE_RATIO = 1.5
DRIFT_PSI = 0.25  # rule of thumb: < 0.1 no real shift, 0.1-0.25 moderate, above: another kind of picture
MIN_DRIFT_IMAGES = 50
HISTOGRAM_BINS = 16
PSI_FLOOR = 1e-4  # empty histogram bins count as this share, so the logarithm stays finite


def label_out_of_range(labels: np.ndarray) -> int | None:
    """The largest of (N,) integer labels if it is no CIFAR-10 class (≥ 10), else None."""
    if labels.size and labels.max() >= NUM_CLASSES:
        return int(labels.max())
    return None


def mismatched_label_names(labels: np.ndarray, names: np.ndarray, label_names: list[str]) -> int:
    """How many of (N,) `names` differ from their (N,) label's name in `label_names`."""
    return int(np.count_nonzero(np.asarray(label_names, dtype=object)[labels] != names))


def copies(digests: Iterable[str], known: set[str]) -> int:
    """How many of the pixel digests are in `known`, repeats counted."""
    return sum(digest in known for digest in digests)


def imbalance_ratio(class_counts: np.ndarray) -> float:
    """Images of the largest class over those of the smallest (at least 1), from (10,) counts."""
    return float(class_counts.max() / max(class_counts.min(), 1))


def psi(base_values: np.ndarray, other_values: np.ndarray) -> float:
    """Max over R, G, B of the population stability index Σ (q − p) · ln(q / p) of two (3, 256) value counts."""
    histograms = (values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2) for values in (base_values, other_values))
    p, q = (np.maximum(counts / counts.sum(axis=1, keepdims=True), PSI_FLOOR) for counts in histograms)
    return float(((q - p) * np.log(q / p)).sum(axis=1).max())


def drift(base_values: np.ndarray, batch_values: np.ndarray, batch_images: int) -> float | None:
    """The batch's `psi` against the ingested data; None under MIN_DRIFT_IMAGES images."""
    return psi(base_values, batch_values) if batch_images >= MIN_DRIFT_IMAGES else None
