"""Screen an inbox's candidates: decode each, refuse test-set copies, and set aside what the
training data already holds. The result says, for every file, added / duplicate / rejected and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cifarflow.data.dataset_versions import active_batches, batch_shards
from cifarflow.data.shards import pixel_digest, read_shards, rows_table, shard_files
from cifarflow.files import read_json
from cifarflow.intake.images import ImageRejected, convert_image
from cifarflow.intake.inbox import Candidate, Inbox, Rejection
from cifarflow.intake.leaks import NEAR_RMS, LeakIndex
from cifarflow.layout import DataLayout
from cifarflow.paths import printable


def image_id(digest: str) -> str:
    """Stable id of an added image: from its content, so the same image always has the same id."""
    return f"add-{digest[:20]}"


@dataclass
class Reference:
    """What new images are checked against: the test set (leaks) and the training data (duplicates)."""

    leak_index: LeakIndex
    known: dict[str, str]  # pixel digest → image id, for every training image (base + batches)
    labels: dict[str, str] = field(default_factory=dict)  # pixel digest → its class name in the training data


def load_reference(layout: DataLayout) -> Reference:
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
    return Reference(leak_index, known, labels)


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
        counts: dict[str, int] = {}
        for item in self.accepted:
            counts[item.candidate.label_name] = counts.get(item.candidate.label_name, 0) + 1
        return dict(sorted(counts.items()))


BLOCK = 256  # files decoded and leak-checked together: progress is reported after each block


def screen_inbox(
    inbox: Inbox,
    reference: Reference,
    log: Callable[[str], None] = print,
    on_progress: Callable[[int, int], None] | None = None,
) -> Screening:
    """Decode every candidate and sort it into accepted, duplicate or rejected (with the reason),
    in blocks; `on_progress(done, total)` follows each block."""
    result = Screening(rejected=list(inbox.rejected))
    seen = dict(reference.known)
    seen_labels = dict(reference.labels)
    total = len(inbox.candidates)
    for start in range(0, total, BLOCK):
        decoded = []
        for candidate in inbox.candidates[start : start + BLOCK]:
            try:
                converted = convert_image(candidate.path)
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
    """Test-set copies are rejected first; then duplicates of `seen` (training data and earlier files),
    each with the class the image already has (`label`), which may differ from its folder's."""
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
