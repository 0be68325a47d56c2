"""Stage 2, validate (as TFX's ExampleValidator): hard problems (`checks`) fail the run naming the shard and
the fix, soft ones are warnings. `dataset.json` lists every shard with its sha256: what preprocess reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.archive import NUM_CLASSES
from cifarflow.data.dataset_versions import DatasetVersion, batch_shards
from cifarflow.data.shards import SCHEMA, SPLITS, pixel_digest
from cifarflow.data.statistics import mean_std, pixel_value_counts
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_directory, atomic_path, file_digest, read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.markdown import escape, join_wrapped
from cifarflow.outputs import StageOutput, read_whole
from cifarflow.validation import checks

OUTPUT_FILES = ("dataset.json", "validation.json", "validation.md")


class DataValidationError(PipelineInputError):
    """The dataset version has a hard problem."""


@dataclass(frozen=True)
class ValidatedData(StageOutput):
    directory: Path
    dataset_version: str
    train_images: int
    test_images: int
    warnings: tuple[str, ...]
    content_sha256: str  # over dataset.json, validation.json and validation.md

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("content_sha256"))

    @property
    def dataset_path(self) -> Path:
        return self.directory / "dataset.json"


Shards = list[dict[str, Any]]  # {path (absolute), rows, sha256} per shard


@dataclass(frozen=True)
class Part:
    name: str  # "ingested train", "batch <id>" or "ingested test"
    shards: Shards
    labels: np.ndarray  # (N,) uint8 class ids
    digests: list[str]  # N sha256 hex digests of the images' pixels
    values: np.ndarray  # (3, 256) int64: how many pixels of each channel have each value


def version_shards(layout: DataLayout, version: DatasetVersion) -> list[tuple[str, Shards]]:
    """The version's parts by name with their shards: ingested train, the batches, ingested test."""
    splits = read_json(layout.shard_manifest)["splits"]
    train, test = ([e | {"path": str(layout.parquet / e["path"])} for e in splits[s]["shards"]] for s in SPLITS)
    batches = [(f"batch {b.batch_id}", batch_shards(b)) for b in version.batches]
    return [("ingested train", train), *batches, ("ingested test", test)]


def read_part(name: str, shards: Shards, label_names: list[str]) -> tuple[Part, list[str]]:
    """The part (from the shards that passed) and its hard problems."""
    problems: list[str] = []
    labels, digests, values = [], [], np.zeros((3, 256), np.int64)
    for shard in shards:
        path = Path(shard["path"])
        problem = f"{name}: shard {path}"
        if not path.is_file() or file_digest(path) != shard["sha256"]:
            problems.append(f"{problem} is missing or changed since it was written")
            continue
        table = pq.read_table(path)
        if not table.schema.equals(SCHEMA):
            problems.append(f"{problem} has schema {table.schema} instead of the ingest schema")
            continue
        shard_labels = table.column("label").to_numpy()
        names = table.column("label_name").cast(pa.string()).to_numpy(zero_copy_only=False)
        highest = checks.label_out_of_range(shard_labels)
        if highest is not None:
            problems.append(f"{problem} has labels up to {highest} (must be 0..9)")
            continue
        wrong = checks.mismatched_label_names(shard_labels, names, label_names)
        if wrong:
            problems.append(f"{problem}: {wrong} label names disagree with their labels")
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images = pixels.reshape(-1, 32 * 32, 3)
        labels.append(shard_labels)
        digests += [pixel_digest(image) for image in images]
        values += pixel_value_counts(images)
    all_labels = np.concatenate(labels) if labels else np.empty(0, np.uint8)
    return Part(name, shards, all_labels, digests, values), problems


def dataset_statistics(base: Part, batches: list[Part], label_names: list[str]) -> dict[str, Any]:
    """validation.json's statistics of the training data."""
    warnings = []
    counts = np.bincount(np.concatenate([base.labels, *(b.labels for b in batches)]), minlength=NUM_CLASSES)
    ratio = checks.imbalance_ratio(counts)
    if ratio > checks.IMBALANCE_RATIO:
        most, least = label_names[counts.argmax()], label_names[counts.argmin()]
        warnings.append(
            f"class imbalance: {most} has {counts.max()} training images, {least} {counts.min()} "
            f"({ratio:.2f}×, over the {checks.IMBALANCE_RATIO}× threshold)"
        )
    seen = set(base.digests)
    parts = [part_row(base, None)]
    for batch in batches:
        score = checks.drift(base.values, batch.values, len(batch.labels))
        if score is not None and score > checks.DRIFT_PSI:
            warnings.append(
                f"drift: {batch.name} has pixel PSI {score:.2f} against the ingested data (over {checks.DRIFT_PSI}); "
                "its images look unlike the rest (brightness, colour or kind of picture)"
            )
        repeated = checks.copies(batch.digests, seen)
        if repeated:
            warnings.append(f"duplicates: {repeated} images of {batch.name} are already in the training data")
        seen.update(batch.digests)
        parts.append(part_row(batch, score, repeated))
    return {
        "class_counts": dict(zip(label_names, counts.tolist())),
        "imbalance_ratio": round(ratio, 4),
        "ingested_duplicates": len(base.digests) - len(set(base.digests)),
        "parts": parts,
        "warnings": warnings,
        "thresholds": {
            "imbalance_ratio": checks.IMBALANCE_RATIO,
            "drift_psi": checks.DRIFT_PSI,
            "min_drift_images": checks.MIN_DRIFT_IMAGES,
        },
    }


def part_row(part: Part, drift_psi: float | None, repeated: int = 0) -> dict[str, Any]:
    """Channel mean and std in pixel / 255; `drift_psi` None: not scored."""
    mean, std = mean_std(part.values)
    return {
        "name": part.name,
        "images": int(len(part.labels)),
        "class_counts": np.bincount(part.labels, minlength=NUM_CLASSES).tolist(),
        **{f"channel_{name}": [round(float(v), 4) for v in values] for name, values in (("mean", mean), ("std", std))},
        "drift_psi": None if drift_psi is None else round(drift_psi, 4),
        "duplicates": repeated,
    }


def data_section(version: DatasetVersion, stats: dict[str, Any]) -> str:
    """validation.md: the report's "Data" section."""
    rows = "\n".join(
        f"| {escape(p['name'])} | {p['images']:,} | {min(p['class_counts'])}–{max(p['class_counts'])} | "
        f"{', '.join(f'{v:.3f}' for v in p['channel_mean'])} | "
        f"{'—' if p['drift_psi'] is None else format(p['drift_psi'], '.3f')} |"
        for p in stats["parts"]
    )
    warnings = "\n".join(f"- ⚠ {escape(w)}" for w in stats["warnings"]) or "- none"
    markdown = f"""## Data

Dataset version `{version.version}`: **{version.train_images:,} training images** ({version.base_train_images:,}
ingested + {len(version.batches)} added batches), {version.test_images:,} test images (the official test set).

| part | images | per class (min–max) | channel mean (R, G, B) | drift PSI |
|---|---|---|---|---|
{rows}

Validation warnings (imbalance over {checks.IMBALANCE_RATIO}×, drift PSI over {checks.DRIFT_PSI}, duplicates):

{warnings}
"""
    return join_wrapped(markdown)


def validate_dataset(layout: DataLayout, version: DatasetVersion, out_dir: Path, log=print) -> ValidatedData:
    """Write OUTPUT_FILES into `out_dir` whole; DataValidationError listing the hard problems, nothing written."""
    parts, problems = [], []
    for name, shards in version_shards(layout, version):
        part, found = read_part(name, shards, version.label_names)
        parts.append(part)
        problems += found
        log(f"{part.name}: {len(part.labels)} images checked")
    base, *batches, test = parts
    test_digests = set(test.digests)
    for batch in batches:
        leaks = checks.copies(batch.digests, test_digests)
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
        # paths relative to this folder: the data dir can move
        shards = [[s | {"path": os.path.relpath(s["path"], out_dir)} for s in part.shards] for part in parts]
        splits = {"train": [s for part in shards[:-1] for s in part], "test": shards[-1]}
        dataset = {"lineage": version.lineage(), "label_names": version.label_names, "splits": splits}
        write_json(staging / "dataset.json", dataset)
        write_json(staging / "validation.json", stats | {"dataset_version": version.version})
        with atomic_path(staging / "validation.md") as tmp:
            tmp.write_text(data_section(version, stats))
    return read_validation(out_dir)


def read_validation(directory: Path) -> ValidatedData:
    stats = read_json(directory / "validation.json")
    lineage = read_json(directory / "dataset.json")["lineage"]
    images = lineage["train_images"], lineage["test_images"]
    digest = text_digest({name: file_digest(directory / name) for name in OUTPUT_FILES})
    return ValidatedData(directory, stats["dataset_version"], *images, tuple(stats["warnings"]), digest)


def find_validation(directory: Path, dataset_version: str) -> ValidatedData | None:
    """The validation in `directory` if of `dataset_version`, whole, and every shard it lists unchanged."""

    def read() -> ValidatedData | None:
        result = read_validation(directory)
        if result.dataset_version != dataset_version:
            return None
        splits = read_json(result.dataset_path)["splits"].values()
        unchanged = all(file_digest(directory / s["path"]) == s["sha256"] for shards in splits for s in shards)
        return result if unchanged else None

    return read_whole(read)
