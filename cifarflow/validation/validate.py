"""Stage 2, validate (as TFX's ExampleValidator): hard problems (`checks`) fail the run naming the files and the
fix, soft ones are warnings. `dataset.json` lists every shard with its sha256: what preprocess reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.data.dataset_versions import DatasetVersion, batch_shards
from cifarflow.data.shards import SPLITS, describe_split, pixel_digest, shard_schema
from cifarflow.data.statistics import mean_std, pixel_value_counts
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_directory, atomic_path, file_digest, read_json, text_digest, write_json
from cifarflow.layout import DataLayout
from cifarflow.markdown import escape, join_wrapped
from cifarflow.outputs import StageOutput, read_whole
from cifarflow.validation import checks

OUTPUT_FILES = ("dataset.json", "validation.json", "validation.md")
EXAMPLES = 3  # files a message names before "and N more"; validation.json lists them all


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
    filenames: list[str]  # N: paths relative to the source's root (folders), archive or inbox names
    digests: list[str]  # N sha256 hex digests of the images' pixels
    hashes: np.ndarray  # (N,) uint64 `checks.difference_hash`es
    values: np.ndarray  # (3, 256) int64: how many pixels of each channel have each value


def listed(items: list[str]) -> str:
    """The first EXAMPLES of `items`, joined, and how many more."""
    more = f" and {len(items) - EXAMPLES:,} more" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


def fix_for(name: str) -> str:
    """What to do about a bad shard of the part called `name`."""
    if name.startswith("batch "):
        return f"withdraw the batch: `python flows/add_images.py --withdraw {name.removeprefix('batch ')}`"
    return "re-ingest with --refresh ingest"


def version_shards(layout: DataLayout, version: DatasetVersion) -> list[tuple[str, Shards]]:
    """The version's parts by name with their shards: ingested train, the batches, ingested test."""
    splits = read_json(layout.shard_manifest)["splits"]
    train, test = ([e | {"path": str(layout.parquet / e["path"])} for e in splits[s]["shards"]] for s in SPLITS)
    batches = [(f"batch {b.batch_id}", batch_shards(b)) for b in version.batches]
    return [("ingested train", train), *batches, ("ingested test", test)]


def read_part(name: str, shards: Shards, label_names: list[str], image_size: int) -> tuple[Part, list[str]]:
    """The part (from the shards that passed) and its hard problems."""
    problems: list[str] = []
    labels, filenames, digests, hashes, values = [], [], [], [], np.zeros((3, 256), np.int64)
    for shard in shards:
        path = Path(shard["path"])
        problem, fix = f"{name}: shard {path}", fix_for(name)
        if not path.is_file() or file_digest(path) != shard["sha256"]:
            problems.append(f"{problem} is missing or changed since it was written: {fix}")
            continue
        table = pq.read_table(path)
        if not table.schema.equals(shard_schema(image_size)):
            problems.append(f"{problem} has schema {table.schema} instead of the ingest schema: {fix}")
            continue
        shard_labels = table.column("label").to_numpy()
        names = table.column("label_name").cast(pa.string()).to_numpy(zero_copy_only=False)
        highest = checks.label_out_of_range(shard_labels, len(label_names))
        if highest is not None:
            problems.append(f"{problem} has labels up to {highest} (must be 0..{len(label_names) - 1}): {fix}")
            continue
        wrong = checks.mismatched_label_names(shard_labels, names, label_names)
        if wrong:
            problems.append(f"{problem}: {wrong} label names disagree with their labels: {fix}")
        pixels = table.column("pixels").combine_chunks().values.to_numpy(zero_copy_only=False)
        images = pixels.reshape(-1, image_size, image_size, 3)
        labels.append(shard_labels)
        filenames += table.column("filename").to_pylist()
        digests += [pixel_digest(image) for image in images]
        hashes.append(checks.difference_hash(images))
        values += pixel_value_counts(images)
    labels, hashes = (np.concatenate(a) if a else np.empty(0, t) for a, t in ((labels, np.uint8), (hashes, np.uint64)))
    return Part(name, shards, labels, filenames, digests, hashes, values), problems


def leaks(training: list[Part], test: Part) -> list[str]:
    """A hard problem per training part (the ingested one first) holding exact copies of test images, naming the
    pairs and the fix."""
    test_files = dict(zip(test.digests, test.filenames))
    problems = []
    for part in training:
        leaked = checks.copies(part.digests, test_files)
        if leaked:
            pairs = listed([f"{part.filenames[i]} = {test_files[part.digests[i]]}" for i in leaked])
            fix = "remove one file of each pair, then run again" if part is training[0] else fix_for(part.name)
            problems.append(f"{part.name}: {len(leaked)} images are exact copies of test images ({pairs}): {fix}")
    return problems


def class_sizes(label_names: list[str], train_counts: np.ndarray, test_counts: np.ndarray) -> list[str]:
    """Hard problems naming the classes with fewer than MIN_TRAIN_IMAGES training images, and those with no test
    images, with their counts."""
    problems, least = [], checks.MIN_TRAIN_IMAGES
    few = [f"{name} ({n})" for name, n in zip(label_names, train_counts.tolist()) if n < least]
    if few:
        problems.append(f"classes with fewer than {least} training images: {listed(few)}: add images or drop the class")
    untested = [f"{name} ({n} training)" for name, n, t in zip(label_names, train_counts, test_counts) if t == 0]
    if untested:
        problems.append(
            f"classes with no test images: {listed(untested)}: add some under test/<class>/, or give the classes "
            "without train/ and test/ folders so that a test split is held out"
        )
    return problems


def data_warnings(parts: list[Part], skipped: list[dict[str, str]]) -> tuple[dict[str, Any], list[str]]:
    """validation.json's duplicate and unreadable-file findings over every part, and their warnings."""
    labels, hashes = np.concatenate([p.labels for p in parts]), np.concatenate([p.hashes for p in parts])
    filenames, digests = [f for p in parts for f in p.filenames], [d for p in parts for d in p.digests]
    exact, near = checks.duplicates_within_classes(labels, hashes, digests)
    near_groups = [[filenames[i] for i in group] for group in near]
    near_images = sum(len(group) - 1 for group in near)
    training = len(labels) - len(parts[-1].labels)  # the test part's positions follow
    across = sum(min(group) < training <= max(group) for group in near)
    warnings = []
    if near:
        warnings.append(
            f"near-duplicates: {near_images} images look like another image of their class (difference hashes at "
            f"most 2 bits apart, other pixels; {across} of the groups span train and test, which flatters the test "
            f"score): {listed([' ~ '.join(group) for group in near_groups])}; remove all but one of each group"
        )
    if exact:
        copies = listed([f"{filenames[i]} = {filenames[j]}" for i, j in exact])
        warnings.append(f"exact copies: {len(exact)} images repeat another image of their class ({copies})")
    conflicts = checks.label_conflicts(labels, digests)
    if conflicts:
        pairs = listed([f"{filenames[i]} = {filenames[j]}" for i, j in conflicts])
        warnings.append(
            f"label conflicts: {len(conflicts)} images repeat an image of another class ({pairs}): one of each pair "
            "is mislabelled; remove it"
        )
    if skipped:
        unreadable = listed([f"{s['path']} ({s['reason']})" for s in skipped])
        warnings.append(f"unreadable files: ingest skipped {len(skipped)}: {unreadable}; replace or delete them")
    findings = {"exact_duplicates": len(exact), "near_duplicates": near_images, "near_duplicates_across_splits": across}
    findings |= {"near_duplicate_groups": near_groups, "label_conflicts": len(conflicts)}
    return findings | {"skipped": skipped}, warnings


def dataset_statistics(parts: list[Part], label_names: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """validation.json: the training data's class counts, the parts' statistics, the findings and the warnings."""
    base, *batches, test = parts
    warnings, classes = [], len(label_names)
    counts = np.bincount(np.concatenate([p.labels for p in parts[:-1]]), minlength=classes)
    ratio = checks.imbalance_ratio(counts)
    if ratio > checks.IMBALANCE_RATIO:
        most, least = label_names[counts.argmax()], label_names[counts.argmin()]
        warnings.append(
            f"class imbalance: {most} has {counts.max()} training images, {least} {counts.min()} "
            f"({ratio:.2f}×, over the {checks.IMBALANCE_RATIO}× threshold)"
        )
    seen = set(base.digests)
    rows = [part_row(base, classes)]
    for batch in batches:
        score = checks.drift(base.values, batch.values, len(batch.labels))
        if score is not None and score > checks.DRIFT_PSI:
            warnings.append(
                f"drift: {batch.name} has pixel PSI {score:.2f} against the ingested data (over {checks.DRIFT_PSI}); "
                "its images look unlike the rest (brightness, colour or kind of picture)"
            )
        repeated = len(checks.copies(batch.digests, seen))
        if repeated:
            warnings.append(f"duplicates: {repeated} images of {batch.name} are already in the training data")
        seen.update(batch.digests)
        rows.append(part_row(batch, classes, score, repeated))
    findings, found = data_warnings(parts, manifest.get("skipped", []))
    return {
        "label_names": label_names,
        "image_size": manifest["image_size"],
        "split": manifest.get("split", {}),
        "class_counts": dict(zip(label_names, counts.tolist())),
        "test_class_counts": dict(zip(label_names, np.bincount(test.labels, minlength=classes).tolist())),
        "imbalance_ratio": round(ratio, 4),
        **findings,
        "parts": [*rows, part_row(test, classes)],
        "warnings": warnings + found,
        "thresholds": {
            "min_train_images": checks.MIN_TRAIN_IMAGES,
            "imbalance_ratio": checks.IMBALANCE_RATIO,
            "drift_psi": checks.DRIFT_PSI,
            "min_drift_images": checks.MIN_DRIFT_IMAGES,
        },
    }


def part_row(part: Part, classes: int, drift_psi: float | None = None, repeated: int = 0) -> dict[str, Any]:
    """Channel mean and std in pixel / 255; `drift_psi` None: not scored."""
    mean, std = mean_std(part.values)
    return {
        "name": part.name,
        "images": int(len(part.labels)),
        "class_counts": np.bincount(part.labels, minlength=classes).tolist(),
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
    side, names = stats["image_size"], stats["label_names"]
    markdown = f"""## Data

Dataset version `{version.version}`: **{version.train_images:,} training images** ({version.base_train_images:,}
ingested + {len(version.batches)} added batches), {version.test_images:,} test images
({describe_split(stats["split"])}); {len(names)} classes ({escape(", ".join(names))}) at {side}×{side} pixels.

| part | images | per class (min–max) | channel mean (R, G, B) | drift PSI |
|---|---|---|---|---|
{rows}

Checks passed: no image is in both the training and the test data; every class has at least
{checks.MIN_TRAIN_IMAGES} training images and a test image. Within classes: {stats["exact_duplicates"]:,} exact
copies, {stats["near_duplicates"]:,} near-duplicates (difference hashes at most 2 bits apart, other pixels).
Unreadable files skipped by ingest: {len(stats["skipped"]):,}.

Validation warnings (imbalance over {checks.IMBALANCE_RATIO}×, drift PSI over {checks.DRIFT_PSI}, duplicates,
unreadable files):

{warnings}
"""
    return join_wrapped(markdown)


def validate_dataset(layout: DataLayout, version: DatasetVersion, out_dir: Path, log=print) -> ValidatedData:
    """Write OUTPUT_FILES into `out_dir` whole; DataValidationError listing the hard problems, nothing written."""
    parts, problems = [], []
    for name, shards in version_shards(layout, version):
        part, found = read_part(name, shards, version.label_names, version.image_size)
        parts.append(part)
        problems += found
        log(f"{part.name}: {len(part.labels)} images checked")
    *training, test = parts
    if not problems:  # the class counts of shards that failed would mislead
        train_counts, test_counts = (
            np.bincount(np.concatenate([p.labels for p in ps]), minlength=len(version.label_names))
            for ps in (training, [test])
        )
        problems += leaks(training, test) + class_sizes(version.label_names, train_counts, test_counts)
    if problems:
        raise DataValidationError(f"dataset version {version.version} failed validation: {'; '.join(problems)}")
    stats = dataset_statistics(parts, version.label_names, read_json(layout.shard_manifest))
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
