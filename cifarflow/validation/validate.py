"""Stage 2, validate: the current dataset version (ingested shards + added batches) checked before
anything trains on it, the way TFX's ExampleValidator checks data against a schema.

Hard problems fail the run with a message that names the shard and what to do: a shard whose schema
or dtypes differ from the ingest schema, a label outside 0..9 or a label name that disagrees with
its label, an added image that is an exact copy of a test image. Soft problems (imbalance, drift,
duplicates) are warnings shown in the report and the Prefect UI; `checks` says how each is measured.

The stage writes `dataset.json` (every shard of the version, with sha256: what preprocess reads),
`validation.json` (the statistics, `summary`) and `validation.md` (for the report, `report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarflow.data.dataset_versions import DatasetVersion
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_directory, atomic_path, file_digest, read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.outputs import StageOutput, read_whole
from cifarflow.validation.checks import copies
from cifarflow.validation.data_section import render_markdown
from cifarflow.validation.parts import read_part, version_shards
from cifarflow.validation.summary import dataset_statistics

OUTPUT_FILES = ("dataset.json", "validation.json", "validation.md")


class DataValidationError(PipelineInputError):
    """The dataset version has a hard problem; training on it would be wrong."""


@dataclass(frozen=True)
class ValidatedData(StageOutput):
    """The validate stage's output: the folder holding `OUTPUT_FILES`, the version it checked, its
    image counts and its warnings (as worded in validation.json)."""

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


def validate_dataset(layout: DataLayout, version: DatasetVersion, out_dir: Path, log=print) -> ValidatedData:
    """Check the version (hard problems raise DataValidationError, and nothing is written), then write
    its shard list, statistics and report section into `out_dir`, atomically."""
    parts, problems = [], []
    for name, shards in version_shards(layout, version):
        part, found = read_part(name, shards, version.label_names)
        parts.append(part)
        problems += found
        log(f"{part.name}: {len(part.labels)} images checked")
    base, *batches, test = parts
    test_digests = set(test.digests)
    for batch in batches:
        leaks = copies(batch.digests, test_digests)
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

    def read() -> ValidatedData | None:
        result = read_validation(directory)
        if result.dataset_version != dataset_version:
            return None
        for shards in read_json(result.dataset_path)["splits"].values():
            for shard in shards:
                if file_digest(directory / shard["path"]) != shard["sha256"]:  # relative to it (or absolute: older)
                    return None
        return result

    return read_whole(read)
