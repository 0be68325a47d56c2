"""The validate stage's checks as pure functions returning what they measured; thresholds with their reasons."""

from __future__ import annotations

from collections.abc import Container, Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MIN_TRAIN_IMAGES = 10  # fewer per class: the model barely sees the class, and its test scores are noise
IMBALANCE_RATIO = 1.5  # largest class over the smallest: beyond it a model leans to the big classes
DRIFT_PSI = 0.25  # rule of thumb: < 0.1 no real shift, 0.1-0.25 moderate, above: another kind of picture
MIN_DRIFT_IMAGES = 50
HISTOGRAM_BINS = 16
PSI_FLOOR = 1e-4  # empty histogram bins count as this share, so the logarithm stays finite
HASH_GRID = (8, 9)  # dHash's grey thumbnail: 8 rows of 9 cells, 8 comparisons a row: 64 bits
GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma, as Pillow's convert("L")
HASH_PIXELS = 1 << 20  # pixels hashed at once: bounds the float32 grey copy to 4 MB at any image size
# a hash and its 64 one-bit neighbours. Near-duplicates: hashes at most 2 of 64 bits apart. A photo saved again as
# a JPEG (quality 75-90) and resized to 8-64 px: 96-99 in 100 within 2 bits (66-83 equal); 45,000 pairs of
# distinct CIFAR-10 test pictures: none within 4 bits.
FLIPS = np.array([0, *(1 << bit for bit in range(64))], np.uint64)


def label_out_of_range(labels: np.ndarray, classes: int) -> int | None:
    """The largest of (N,) integer labels if it names no class (≥ `classes`), else None."""
    if labels.size and labels.max() >= classes:
        return int(labels.max())
    return None


def mismatched_label_names(labels: np.ndarray, names: np.ndarray, label_names: list[str]) -> int:
    """How many of (N,) `names` differ from their (N,) label's name in `label_names`."""
    return int(np.count_nonzero(np.asarray(label_names, dtype=object)[labels] != names))


def copies(digests: Iterable[str], known: Container[str]) -> list[int]:
    """The positions of the pixel digests that are in `known`."""
    return [i for i, digest in enumerate(digests) if digest in known]


def imbalance_ratio(class_counts: np.ndarray) -> float:
    """Images of the largest class over those of the smallest (at least 1), from (classes,) counts."""
    return float(class_counts.max() / max(class_counts.min(), 1))


def difference_hash(images: np.ndarray) -> np.ndarray:
    """(N,) uint64 perceptual hashes of (N, S, S, 3) uint8 images, any S ≥ 8: dHash (N. Krawetz, "Kind of like that",
    hackerfactor.com, 2013): the grey image's means over an 8 × 9 grid of cells, one bit per cell brighter than
    the cell left of it. Resizing, re-encoding and light noise rarely change it; other pictures rarely share it."""
    if images.shape[1] < HASH_GRID[1]:  # fewer columns than cells (S = 8): doubled, so that no cell is empty
        images = images.repeat(2, axis=1).repeat(2, axis=2)
    n, side = images.shape[:2]
    rows, cols = (np.arange(cells) * side // cells for cells in HASH_GRID)
    area = np.outer(*(np.diff(edges, append=side) for edges in (rows, cols)))
    hashes, chunk = np.empty(n, np.uint64), max(1, HASH_PIXELS // side**2)
    for start in range(0, n, chunk):
        grey = images[start : start + chunk] @ GREY
        cells = np.add.reduceat(np.add.reduceat(grey, rows, axis=1), cols, axis=2) / area
        bits = (cells[:, :, 1:] > cells[:, :, :-1]).reshape(len(cells), -1)
        hashes[start : start + chunk] = np.packbits(bits, axis=1).view(">u8")[:, 0]
    return hashes


def near_groups(hashes: np.ndarray) -> np.ndarray:
    """(N,) int64 group ids of (N,) uint64 `difference_hash`es: hashes at most 2 bits apart share a group, and so
    do chains of them. Two such hashes share a neighbour in FLIPS, so sorting the 65 neighbours of each distinct
    hash finds every pair in O(N log N)."""
    unique, inverse = np.unique(hashes, return_inverse=True)
    neighbours = (unique[:, None] ^ FLIPS).ravel()
    order = np.argsort(neighbours)
    same = neighbours[order][1:] == neighbours[order][:-1]
    owners = order // len(FLIPS)  # the distinct hash each neighbour is of
    links = coo_matrix((np.ones(same.sum()), (owners[1:][same], owners[:-1][same])), shape=(len(unique),) * 2)
    return connected_components(links, directed=False)[1][inverse]


def label_conflicts(labels: np.ndarray, digests: list[str]) -> list[tuple[int, int]]:
    """(earlier, later) positions of images whose pixels repeat an earlier image's under another label, over (N,)
    labels and N pixel digests: one of each pair is mislabelled (a class folder linked under two names, a copy)."""
    first: dict[str, int] = {}
    return [
        (first[digest], position)
        for position, (label, digest) in enumerate(zip(labels.tolist(), digests))
        if labels[first.setdefault(digest, position)] != label
    ]


def duplicates_within_classes(
    labels: np.ndarray, hashes: np.ndarray, digests: list[str]
) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """(exact, near) over (N,) labels, (N,) `difference_hash`es and N pixel digests: `exact` pairs the position of
    each image that repeats the pixels of an earlier one of its class with that one's; `near` lists groups of
    positions (one per distinct pixels, at least two, ascending) of images of one class in one of its
    `near_groups`."""
    first: dict[tuple[int, str], int] = {}
    exact = []
    for position, key in enumerate(zip(labels.tolist(), digests)):
        if first.setdefault(key, position) != position:
            exact.append((first[key], position))
    group = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = labels == label
        group[members] = near_groups(hashes[members]) + len(labels) * int(label)  # classes' ids apart
    order = np.argsort(group, kind="stable")  # stable: positions ascending within a group
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    sizes = np.diff(np.append(starts, len(order)))
    near = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        first = {}  # pixel digest → its first position
        for position in order[start : start + size].tolist():
            first.setdefault(digests[position], position)
        if len(first) > 1:
            near.append(list(first.values()))
    return exact, near


def psi(base_values: np.ndarray, other_values: np.ndarray) -> float:
    """Max over R, G, B of the population stability index Σ (q − p) · ln(q / p) of two (3, 256) value counts."""
    histograms = (values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2) for values in (base_values, other_values))
    p, q = (np.maximum(counts / counts.sum(axis=1, keepdims=True), PSI_FLOOR) for counts in histograms)
    return float(((q - p) * np.log(q / p)).sum(axis=1).max())


def drift(base_values: np.ndarray, batch_values: np.ndarray, batch_images: int) -> float | None:
    """The batch's `psi` against the ingested data; None under MIN_DRIFT_IMAGES images."""
    return psi(base_values, batch_values) if batch_images >= MIN_DRIFT_IMAGES else None
