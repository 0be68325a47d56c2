"""The validate stage's checks as pure functions: each takes arrays or sets and returns what it
measured (a count, a ratio, a score); the callers decide what is a problem and word the message.

Hard problems (they fail the run): a label outside 0..9, a label name that disagrees with its label,
an added image that is an exact copy of a test image. Soft problems (warnings):

- **imbalance**: the largest class has more than `IMBALANCE_RATIO` times the images of the smallest;
- **drift**: an added batch's pixel intensities differ from the ingested data's. The statistic is the
  population stability index (PSI) of each colour channel's 16-bin histogram,
  PSI = Σ (batch share − base share) · ln(batch share / base share), the largest over R, G, B.
  Rule of thumb: below 0.1 no real shift, 0.1-0.25 moderate, above `DRIFT_PSI` (0.25) a different
  kind of picture (night shots, sketches, another camera). Batches under `MIN_DRIFT_IMAGES` are
  too small to judge and are not scored;
- **duplicates**: an image that appears more than once across the ingested data and the batches.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cifarflow.data.archive import NUM_CLASSES

IMBALANCE_RATIO = 1.5
DRIFT_PSI = 0.25
MIN_DRIFT_IMAGES = 50
HISTOGRAM_BINS = 16
PSI_FLOOR = 1e-4  # empty histogram bins count as this share, so the logarithm stays finite


def label_out_of_range(labels: np.ndarray) -> int | None:
    """The largest of (N,) integer labels if it is no CIFAR-10 class (≥ 10), else None."""
    if labels.size and labels.max() >= NUM_CLASSES:
        return int(labels.max())
    return None


def mismatched_label_names(labels: np.ndarray, names: np.ndarray, label_names: list[str]) -> int:
    """How many rows name a class other than their label's: (N,) integer labels in 0..9 against (N,)
    object array of names, `label_names[k]` being class k's name."""
    return int(np.count_nonzero(np.asarray(label_names, dtype=object)[labels] != names))


def copies(digests: Iterable[str], known: set[str]) -> int:
    """How many of the image digests (sha256 hex of the pixels) are in `known`, repeats counted."""
    return sum(digest in known for digest in digests)


def imbalance_ratio(class_counts: np.ndarray) -> float:
    """Images of the largest class over those of the smallest (floored at 1 image), from (10,) counts."""
    return float(class_counts.max() / max(class_counts.min(), 1))


def psi(base_values: np.ndarray, other_values: np.ndarray) -> float:
    """Largest per-channel population stability index between the 16-bin histograms of two (3, 256)
    int64 pixel-value counts (`values[c, v]`: pixels of channel c with value v). Unitless, ≥ 0."""
    base = base_values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2)
    other = other_values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2)
    p = np.maximum(base / base.sum(axis=1, keepdims=True), PSI_FLOOR)
    q = np.maximum(other / other.sum(axis=1, keepdims=True), PSI_FLOOR)
    return float(((q - p) * np.log(q / p)).sum(axis=1).max())


def drift(base_values: np.ndarray, batch_values: np.ndarray, batch_images: int) -> float | None:
    """The batch's PSI against the ingested data (see `psi`), or None for a batch of fewer than
    `MIN_DRIFT_IMAGES` images: too small to judge."""
    return psi(base_values, batch_values) if batch_images >= MIN_DRIFT_IMAGES else None
