"""Test-set leak check: is a new image an exact or near copy of one of the 10,000 test images?

A copy of a test image in the training data inflates every score after it, so it is refused even
when it was re-encoded, resized or shifted. Each image is reduced to a *signature*: its centre
28×28 pixels averaged over 4×4 blocks (7×7×3 values). Averaging absorbs JPEG noise and resampling
blur; comparing the new image at every shift of up to `MAX_SHIFT` pixels, and mirrored, absorbs a
small translation or a flip. The distance is the RMS difference of the signatures in 0..255 pixel
units; at or below `NEAR_RMS` the image is a near copy. What this catches and misses, measured on
the real data, is in the README ("What the leak check catches").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 4
MAX_SHIFT = 2
CROP = 32 - 2 * MAX_SHIFT  # 28: the centre every shifted view still contains
NEAR_RMS = 8.0  # signature RMS distance (pixel units) at or below which an image is a near copy
CHUNK = 32  # query images per matrix product: 32 × 50 views × 10,000 test images = 64 MB of distances


def block_signature(crops: np.ndarray) -> np.ndarray:
    """(N, 28, 28, 3) pixels → (N, 147) float32 block means."""
    n = len(crops)
    blocks = crops.reshape(n, CROP // BLOCK, BLOCK, CROP // BLOCK, BLOCK, 3).astype(np.float32)
    return blocks.mean(axis=(2, 4)).reshape(n, -1)


def reference_signatures(images: np.ndarray) -> np.ndarray:
    """Signatures of the reference (test) images: their centre crop, unshifted."""
    m = MAX_SHIFT
    return block_signature(np.asarray(images)[:, m : m + CROP, m : m + CROP])


def view_signatures(images: np.ndarray) -> np.ndarray:
    """(N, views, 147): each image at every shift in [-MAX_SHIFT, MAX_SHIFT]², as is and mirrored."""
    images = np.asarray(images)
    views = []
    for source in (images, images[:, :, ::-1]):
        for dy in range(2 * MAX_SHIFT + 1):
            for dx in range(2 * MAX_SHIFT + 1):
                views.append(block_signature(source[:, dy : dy + CROP, dx : dx + CROP]))
    return np.stack(views, axis=1)


@dataclass(frozen=True)
class LeakIndex:
    """The test images' signatures, ready to answer "nearest test image, and how near" for a batch."""

    signatures: np.ndarray  # (T, 147) float32
    image_ids: list[str]

    @classmethod
    def build(cls, test_images: np.ndarray, image_ids: list[str]) -> LeakIndex:
        return cls(reference_signatures(test_images), list(image_ids))

    def nearest(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each image: the index of its nearest test image and the RMS signature distance to it."""
        reference = self.signatures
        reference_norms = np.square(reference).sum(axis=1)
        indices = np.empty(len(images), np.int64)
        distances = np.empty(len(images), np.float32)
        for start in range(0, len(images), CHUNK):
            views = view_signatures(images[start : start + CHUNK])  # (n, V, D)
            n, v, d = views.shape
            flat = views.reshape(n * v, d)
            squared = np.square(flat).sum(axis=1)[:, None] + reference_norms[None, :] - 2.0 * (flat @ reference.T)
            best = squared.reshape(n, v, -1).min(axis=1).argmin(axis=1)  # nearest test image, over all views
            # the expansion above loses float32 precision; the winner's distance is recomputed exactly
            exact = np.square(views.astype(np.float64) - reference[best][:, None, :].astype(np.float64))
            indices[start : start + n] = best
            distances[start : start + n] = np.sqrt(exact.mean(axis=2).min(axis=1))
        return indices, distances
