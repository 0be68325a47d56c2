"""The test set's two fixed halves, for cross-fitting the temperature: an image's half is the parity
of the first byte of its pixels' sha256, so it is the same wherever the image stands in the test set
and whatever else the test set holds, and nothing about the model or its labels chooses it."""

from __future__ import annotations

import hashlib

import numpy as np


def half_of(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 images → (N,) bool: True for half A, False for half B."""
    return np.fromiter(
        (hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[0] & 1 == 0 for image in pixels),
        dtype=bool,
        count=len(pixels),
    )
