"""Stage 2, validate: the current dataset version (ingested shards + added batches) checked before
anything trains on it, the way TFX's ExampleValidator checks data against a schema.

Hard problems fail the run with a message that names the shard and what to do: a shard whose schema
or dtypes differ from the ingest schema, a label outside 0..9 or a label name that disagrees with
its label, an added image that is an exact copy of a test image. Soft problems are warnings shown in
the report and the Prefect UI:

- **imbalance**: the largest class has more than `IMBALANCE_RATIO` times the images of the smallest;
- **drift**: an added batch's pixel intensities differ from the ingested data's. The statistic is the
  population stability index (PSI) of each colour channel's 16-bin histogram,
  PSI = Σ (batch share − base share) · ln(batch share / base share), the largest over R, G, B.
  Rule of thumb: below 0.1 no real shift, 0.1-0.25 moderate, above `DRIFT_PSI` (0.25) a different
  kind of picture (night shots, sketches, another camera). Batches under `MIN_DRIFT_IMAGES` are
  too small to judge and are not scored;
- **duplicates**: an image that appears more than once across the ingested data and the batches.

The stage writes `dataset.json` (every shard of the version, with sha256: what preprocess reads),
`validation.json` (the statistics) and `validation.md` (for the report).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.archive import NUM_CLASSES
from cifarflow.data.shards import SCHEMA, pixel_digest
from cifarflow.data.versions import DatasetVersion, batch_shards
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_directory, atomic_path, file_digest, read_json, text_digest, write_json
from cifarflow.layout import DataLayout

IMBALANCE_RATIO = 1.5
DRIFT_PSI = 0.25
MIN_DRIFT_IMAGES = 50
HISTOGRAM_BINS = 16
OUTPUT_FILES = ("dataset.json", "validation.json", "validation.md")
PSI_FLOOR = 1e-4  # empty histogram bins count as this share, so the logarithm stays finite


class DataValidationError(PipelineInputError):
    """The dataset version has a hard problem; training on it would be wrong."""


@dataclass(frozen=True)
class ValidatedData:
    directory: Path
    dataset_version: str
    train_images: int
    test_images: int
    warnings: tuple[str, ...]
    content_sha256: str  # over dataset.json, validation.json and validation.md

    @property
    def location(self) -> Path:
        return self.directory

    @property
    def fingerprint(self) -> str:
        """The content, not just the version: a new threshold re-runs the report that shows the
        warnings. Preprocess then re-runs too, but writes the same features, so training stays cached."""
        return self.content_sha256

    @property
    def dataset_path(self) -> Path:
        return self.directory / "dataset.json"


@dataclass
class Part:
    """One part of the version (the ingested train or test split, or a batch) as read from its shards."""

    name: str
    shards: list[dict[str, Any]]  # {path (absolute), rows, sha256}
    labels: np.ndarray | None = None
    digests: list[str] | None = None
    values: np.ndarray | None = None  # (3, 256): how many pixels of each channel have each value


def version_parts(layout: DataLayout, version: DatasetVersion) -> tuple[Part, list[Part], Part]:
    manifest = read_json(layout.shard_manifest)

    def base(split: str) -> list[dict[str, Any]]:
        return [e | {"path": str(layout.parquet / e["path"])} for e in manifest["splits"][split]["shards"]]

    batches = [Part(f"batch {b.batch_id}", batch_shards(b)) for b in version.batches]
    return Part("ingested train", base("train")), batches, Part("ingested test", base("test"))


def read_part(part: Part, label_names: list[str], problems: list[str]) -> None:
    """Check each shard's content hash, schema, labels and label names; gather the part's statistics."""
    labels, digests, values = [], [], np.zeros((3, 256), np.int64)
    for shard in part.shards:
        path = Path(shard["path"])
        if not path.is_file() or file_digest(path) != shard["sha256"]:
            problems.append(f"{part.name}: shard {path} is missing or changed since it was written")
            continue
        table = pq.read_table(path)
        if not table.schema.equals(SCHEMA):
            problems.append(f"{part.name}: shard {path} has schema {table.schema} instead of the ingest schema")
            continue
        shard_labels = table.column("label").to_numpy()
        names = table.column("label_name").cast(pa.string()).to_numpy(zero_copy_only=False)
        if shard_labels.size and shard_labels.max() >= NUM_CLASSES:
            problems.append(f"{part.name}: shard {path} has labels up to {shard_labels.max()} (must be 0..9)")
            continue
        wrong = np.flatnonzero(np.asarray(label_names, dtype=object)[shard_labels] != names)
        if wrong.size:
            problems.append(f"{part.name}: shard {path}: {wrong.size} label names disagree with their labels")
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images = pixels.reshape(-1, 32 * 32, 3)
        labels.append(shard_labels)
        digests += [pixel_digest(image) for image in images]
        for channel in range(3):
            values[channel] += np.bincount(images[:, :, channel].ravel(), minlength=256)
    part.labels = np.concatenate(labels) if labels else np.empty(0, np.uint8)
    part.digests, part.values = digests, values


def channel_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of pixels / 255 from the (3, 256) value counts."""
    levels = np.arange(256) / 255.0
    count = np.maximum(values.sum(axis=1), 1)
    mean = (values * levels).sum(axis=1) / count
    return mean, np.sqrt(np.maximum((values * levels**2).sum(axis=1) / count - mean**2, 0))


def psi(base_values: np.ndarray, other_values: np.ndarray) -> float:
    """Largest per-channel population stability index between the 16-bin histograms of two (3, 256)
    value counts."""
    base = base_values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2)
    other = other_values.reshape(3, HISTOGRAM_BINS, -1).sum(axis=2)
    p = np.maximum(base / base.sum(axis=1, keepdims=True), PSI_FLOOR)
    q = np.maximum(other / other.sum(axis=1, keepdims=True), PSI_FLOOR)
    return float(((q - p) * np.log(q / p)).sum(axis=1).max())


def validate_dataset(layout: DataLayout, version: DatasetVersion, out_dir: Path, log=print) -> ValidatedData:
    """Check the version (hard problems raise DataValidationError), then write its shard list and statistics."""
    base, batches, test = version_parts(layout, version)
    problems: list[str] = []
    for part in (base, *batches, test):
        read_part(part, version.label_names, problems)
        log(f"{part.name}: {len(part.labels)} images checked")
    test_digests = set(test.digests)
    for batch in batches:
        leaks = sum(digest in test_digests for digest in batch.digests)
        if leaks:
            problems.append(f"{batch.name}: {leaks} images are exact copies of test images")
    if problems:
        raise DataValidationError(
            f"dataset version {version.version} failed validation:\n  - "
            + "\n  - ".join(problems)
            + "\nWithdraw a bad batch with `python flows/add_images.py --withdraw BATCH_ID`, or re-ingest "
            "with --refresh ingest if an ingested shard is at fault."
        )
    stats = dataset_statistics(base, batches, version.label_names)
    with atomic_directory(out_dir) as staging:
        write_json(
            staging / "dataset.json",
            {
                "lineage": version.lineage(),
                "label_names": version.label_names,
                "splits": {  # paths relative to this folder: the data dir can move
                    "train": [relative_entry(s, out_dir) for part in (base, *batches) for s in part.shards],
                    "test": [relative_entry(s, out_dir) for s in test.shards],
                },
            },
        )
        write_json(staging / "validation.json", stats | {"dataset_version": version.version})
        with atomic_path(staging / "validation.md") as tmp:
            tmp.write_text(render_markdown(version, stats))
    return read_validation(out_dir)


def relative_entry(shard: dict[str, Any], directory: Path) -> dict[str, Any]:
    return shard | {"path": os.path.relpath(shard["path"], directory)}


def dataset_statistics(base: Part, batches: list[Part], label_names: list[str]) -> dict[str, Any]:
    warnings = []
    counts = np.bincount(np.concatenate([base.labels, *(b.labels for b in batches)]), minlength=NUM_CLASSES)
    ratio = counts.max() / max(counts.min(), 1)
    if ratio > IMBALANCE_RATIO:
        most, least = label_names[counts.argmax()], label_names[counts.argmin()]
        warnings.append(
            f"class imbalance: {most} has {counts.max()} training images, {least} {counts.min()} "
            f"({ratio:.2f}×, over the {IMBALANCE_RATIO}× threshold)"
        )
    seen = set(base.digests)
    parts = [part_row(base, None)]
    for batch in batches:
        drift = psi(base.values, batch.values) if len(batch.labels) >= MIN_DRIFT_IMAGES else None
        if drift is not None and drift > DRIFT_PSI:
            warnings.append(
                f"drift: {batch.name} has pixel PSI {drift:.2f} against the ingested data (over {DRIFT_PSI}); "
                "its images look unlike the rest (brightness, colour or kind of picture)"
            )
        repeated = sum(digest in seen for digest in batch.digests)
        if repeated:
            warnings.append(f"duplicates: {repeated} images of {batch.name} are already in the training data")
        seen.update(batch.digests)
        parts.append(part_row(batch, drift, repeated))
    return {
        "class_counts": dict(zip(label_names, counts.tolist())),
        "imbalance_ratio": round(float(ratio), 4),
        "ingested_duplicates": len(base.digests) - len(set(base.digests)),
        "parts": parts,
        "warnings": warnings,
        "thresholds": {
            "imbalance_ratio": IMBALANCE_RATIO,
            "drift_psi": DRIFT_PSI,
            "min_drift_images": MIN_DRIFT_IMAGES,
        },
    }


def part_row(part: Part, drift: float | None, repeated: int = 0) -> dict[str, Any]:
    mean, std = channel_moments(part.values)
    return {
        "name": part.name,
        "images": int(len(part.labels)),
        "class_counts": np.bincount(part.labels, minlength=NUM_CLASSES).tolist(),
        "channel_mean": [round(float(v), 4) for v in mean],
        "channel_std": [round(float(v), 4) for v in std],
        "drift_psi": None if drift is None else round(drift, 4),
        "duplicates": repeated,
    }


def render_markdown(version: DatasetVersion, stats: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {p['name']} | {p['images']:,} | {min(p['class_counts'])}–{max(p['class_counts'])} | "
        f"{', '.join(f'{v:.3f}' for v in p['channel_mean'])} | "
        f"{'—' if p['drift_psi'] is None else format(p['drift_psi'], '.3f')} |"
        for p in stats["parts"]
    )
    warnings = "\n".join(f"- ⚠ {w}" for w in stats["warnings"]) or "- none"
    return f"""## Data

Dataset version `{version.version}`: **{version.train_images:,} training images** ({version.base_train_images:,}
ingested + {len(version.batches)} added batches), {version.test_images:,} test images (the official test set).

| part | images | per class (min–max) | channel mean (R, G, B) | drift PSI |
|---|---|---|---|---|
{rows}

Validation warnings (imbalance over {IMBALANCE_RATIO}×, drift PSI over {DRIFT_PSI}, duplicates):

{warnings}
"""


def read_validation(directory: Path) -> ValidatedData:
    stats = read_json(directory / "validation.json")
    lineage = read_json(directory / "dataset.json")["lineage"]
    return ValidatedData(
        directory,
        stats["dataset_version"],
        lineage["train_images"],
        lineage["test_images"],
        tuple(stats["warnings"]),
        text_digest({name: file_digest(directory / name) for name in OUTPUT_FILES}),
    )


def find_validation(directory: Path, dataset_version: str) -> ValidatedData | None:
    """The validation in `directory` if it is of `dataset_version`, whole, and every shard it lists
    still matches (a batch added while a run started cannot pass for the version before it)."""
    try:
        result = read_validation(directory)
        if result.dataset_version != dataset_version:
            return None
        for shards in read_json(result.dataset_path)["splits"].values():
            for shard in shards:
                if file_digest(directory / shard["path"]) != shard["sha256"]:  # relative to it (or absolute: older)
                    return None
        return result
    except (OSError, ValueError, KeyError):
        return None
