"""Screen an inbox `INBOX/<class name>/<file>` (never written): each file is added, a duplicate, or rejected (why)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarflow.data.dataset_versions import active_batches, batch_shards
from cifarflow.data.shards import pixel_digest, read_shards, rows_table, shard_files
from cifarflow.files import read_json
from cifarflow.intake.images import EXTENSIONS, ImageRejected, convert_image
from cifarflow.layout import DataLayout
from cifarflow.paths import name_key, printable, walk


@dataclass(frozen=True)
class Candidate:
    path: Path
    label: int
    label_name: str


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Inbox:
    root: Path
    candidates: list[Candidate]
    rejected: list[Rejection]

    @property
    def files(self) -> int:
        return len(self.candidates) + len(self.rejected)


def scan_inbox(root: Path, label_names: list[str]) -> Inbox:
    """Candidates in `root/<class>/…` (class names case-insensitive, sub-folders included), sorted by path; every
    other file rejected with the reason (paths as `cifarflow.paths.printable` text)."""
    classes = {name_key(name): label for label, name in enumerate(label_names)}
    candidates, rejected = [], []
    for found in sorted(walk(root), key=lambda found: str(found.path)):
        path, parts = found.path, found.path.relative_to(root).parts
        label = classes.get(name_key(parts[0])) if parts else None
        if not parts:  # the inbox itself could not be read (removed since the command started)
            reason = f"the inbox {found.problem}"
        elif len(parts) == 1 and found.problem is None:
            reason = "not in a class folder: put it in INBOX/<class name>/"
        elif found.problem is not None:
            reason = found.problem
        elif label is None:
            reason = (
                f"folder {parts[0]!r} is not one of this data dir's classes ({', '.join(label_names)}): a data dir "
                "holds one data set; put images of other classes in another --data-dir"
            )
        elif path.suffix.lower() not in EXTENSIONS:
            reason = f"extension {printable(path.suffix) or '(none)'!r} is not one of {', '.join(sorted(EXTENSIONS))}"
        else:
            candidates.append(Candidate(path, label, label_names[label]))
            continue
        rejected.append(Rejection(printable(path), reason))
    return Inbox(root, candidates, rejected)


BLOCKS = 7  # a signature averages a BLOCKS × BLOCKS grid of cells (× 3 channels): 147 numbers at any image size
NEAR_RMS = 8.0  # signature RMS distance (pixel units) at or below which an image is a near copy
CHUNK = 32  # query images per matrix product: 32 × 50 views × 10,000 test images = 64 MB of distances


@dataclass(frozen=True)
class Geometry:
    """Where a signature looks in an S × S image: cells of `cell` = S // 8 pixels (4 at 32), the centre crop of
    BLOCKS cells (28 px at 32) at `base`, shifted by each of `shifts` (up to half the margin: ±2 px at 32)."""

    cell: int
    base: int
    shifts: tuple[int, ...]

    @classmethod
    def of(cls, side: int) -> Geometry:
        cell = max(1, side // 8)
        base = (side - BLOCKS * cell) // 2
        return cls(cell, base, tuple(sorted({round(base * k / 2) for k in range(-2, 3)})))

    @property
    def crop(self) -> int:
        return BLOCKS * self.cell


def block_signature(crops: np.ndarray, cell: int) -> np.ndarray:
    """(N, BLOCKS·cell, BLOCKS·cell, 3) pixels → (N, 147) float32 block means."""
    n = len(crops)
    blocks = crops.reshape(n, BLOCKS, cell, BLOCKS, cell, 3).astype(np.float32)
    return blocks.mean(axis=(2, 4)).reshape(n, -1)


def view_signatures(images: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, views, 147): each image at every shift in `geometry.shifts`², as is and mirrored."""
    images, crop = np.asarray(images), geometry.crop
    starts = [geometry.base + shift for shift in geometry.shifts]
    crops = (s[:, y : y + crop, x : x + crop] for s in (images, images[:, :, ::-1]) for y in starts for x in starts)
    return np.stack([block_signature(view, geometry.cell) for view in crops], axis=1)


@dataclass(frozen=True)
class LeakIndex:
    """Test images' signatures: the centre crop averaged over cells (`Geometry`: 28×28 px in 4×4 cells at 32),
    compared at every shift and mirrored; RMS ≤ NEAR_RMS (0..255 units) is a near copy. What it
    catches and misses: docs/explanation/leak-check.md."""

    signatures: np.ndarray  # (T, 147) float32
    image_ids: list[str]
    geometry: Geometry

    @classmethod
    def build(cls, test_images: np.ndarray, image_ids: list[str]) -> LeakIndex:
        """The index of (T, S, S, 3) uint8 `test_images`; the images it is asked about must be S × S too."""
        test_images = np.asarray(test_images)
        geometry = Geometry.of(test_images.shape[1])
        base, crop = geometry.base, geometry.crop
        centre = test_images[:, base : base + crop, base : base + crop]
        return cls(block_signature(centre, geometry.cell), list(image_ids), geometry)

    def nearest(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) int64 indices of the nearest test images and (N,) float32 RMS signature distances to them."""
        reference = self.signatures
        reference_norms = np.square(reference).sum(axis=1)
        indices = np.empty(len(images), np.int64)
        distances = np.empty(len(images), np.float32)
        for start in range(0, len(images), CHUNK):
            views = view_signatures(images[start : start + CHUNK], self.geometry)  # (n, V, D)
            n, v, d = views.shape
            flat = views.reshape(n * v, d)
            squared = np.square(flat).sum(axis=1)[:, None] + reference_norms[None, :] - 2.0 * (flat @ reference.T)
            best = squared.reshape(n, v, -1).min(axis=1).argmin(axis=1)  # nearest test image, over all views
            # the expansion above loses float32 precision; the winner's distance is recomputed exactly
            exact = np.square(views.astype(np.float64) - reference[best][:, None, :].astype(np.float64))
            indices[start : start + n] = best
            distances[start : start + n] = np.sqrt(exact.mean(axis=2).min(axis=1))
        return indices, distances


def image_id(digest: str) -> str:
    """`add-<20 hex>`: an added image's id, from its pixels' sha256."""
    return f"add-{digest[:20]}"


@dataclass
class Reference:
    leak_index: LeakIndex
    known: dict[str, str]  # pixel digest → image id, for every training image (base + batches)
    image_size: int  # the data set's side: candidates are converted to it
    labels: dict[str, str] = field(default_factory=dict)  # pixel digest → its class name in the training data


def load_reference(layout: DataLayout) -> Reference:
    """The test images' LeakIndex and the digests and classes of the ingested and added training images."""
    manifest = read_json(layout.shard_manifest)
    splits, names = manifest["splits"], manifest["label_names"]
    test_images, _ = read_shards(*shard_files(layout.parquet, splits["test"]["shards"]))
    leak_index = LeakIndex.build(test_images, [f"test-{i:05d}" for i in range(len(test_images))])
    base, base_labels = read_shards(*shard_files(layout.parquet, splits["train"]["shards"]))
    digests = [pixel_digest(image) for image in base]
    known = {digest: f"train-{i:05d}" for i, digest in enumerate(digests)}  # ingest's ids
    labels = {digest: names[label] for digest, label in zip(digests, base_labels)}
    for batch in active_batches(layout):
        images, batch_labels = read_shards(*shard_files(batch.directory, batch_shards(batch)))
        for image, label in zip(images, batch_labels):
            digest = pixel_digest(image)
            known[digest], labels[digest] = image_id(digest), names[label]
    return Reference(leak_index, known, manifest.get("image_size", test_images.shape[1]), labels)


@dataclass(frozen=True)
class Accepted:
    candidate: Candidate
    pixels: np.ndarray
    digest: str


@dataclass
class Screening:
    accepted: list[Accepted] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {path, of, label: the class it has there}
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)  # {path, note}: decoded, but not as the file asked

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(item.candidate.label_name for item in self.accepted).items()))


BLOCK = 256  # files decoded and leak-checked together: progress is reported after each block


def screen_inbox(
    inbox: Inbox,
    reference: Reference,
    log: Callable[[str], None] = print,
    on_progress: Callable[[int, int], None] | None = None,
) -> Screening:
    """Every candidate accepted, duplicate or rejected (with the reason); `on_progress(done, total)` per block."""
    result = Screening(rejected=list(inbox.rejected))
    seen = dict(reference.known)
    seen_labels = dict(reference.labels)
    total = len(inbox.candidates)
    for start in range(0, total, BLOCK):
        decoded = []
        for candidate in inbox.candidates[start : start + BLOCK]:
            try:
                converted = convert_image(candidate.path, reference.image_size)
            except ImageRejected as reason:
                result.rejected.append(Rejection(printable(candidate.path), str(reason)))
                continue
            decoded.append((candidate, converted.pixels))
            result.notes += [{"path": printable(candidate.path), "note": note} for note in converted.notes]
        if decoded:
            sort_decoded(decoded, reference, seen, seen_labels, result)
        done = min(start + BLOCK, total)
        log(f"checked {done}/{total} files")
        if on_progress is not None:
            on_progress(done, total)
    result.rejected.sort(key=lambda r: r.path)
    return result


def sort_decoded(
    decoded: list[tuple[Candidate, np.ndarray]], reference: Reference, seen: dict, seen_labels: dict, result: Screening
):
    """Test-set copies rejected first, then duplicates of `seen` set aside with the class they have there."""
    nearest, distances = reference.leak_index.nearest(np.stack([pixels for _, pixels in decoded]))
    for (candidate, pixels), test_index, distance in zip(decoded, nearest, distances):
        if distance <= NEAR_RMS:
            test_id = reference.leak_index.image_ids[test_index]
            kind = "an exact copy" if distance == 0 else f"a near copy (distance {distance:.1f} ≤ {NEAR_RMS:g})"
            reason = f"test-set leak: {kind} of test image {test_id}"
            result.rejected.append(Rejection(printable(candidate.path), reason))
            continue
        digest = pixel_digest(pixels)
        if digest in seen:
            duplicate = {"path": printable(candidate.path), "of": seen[digest], "label": seen_labels.get(digest, "")}
            result.duplicates.append(duplicate)
            continue
        seen[digest], seen_labels[digest] = printable(candidate.path), candidate.label_name
        result.accepted.append(Accepted(candidate, pixels, digest))


def batch_table(accepted: list[Accepted], label_names: list[str]):
    """The accepted images as a table in the ingest schema, with their original paths as filenames."""
    return rows_table(
        [image_id(a.digest) for a in accepted],
        [printable(a.candidate.path.resolve()) for a in accepted],
        np.array([a.candidate.label for a in accepted], np.uint8),
        label_names,
        np.stack([a.pixels for a in accepted]),
    )
