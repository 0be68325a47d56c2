"""Registry versions on disk: each promoted model is an immutable, numbered folder
`versions/vN/`, built whole in `.staging/` and renamed into place (see store.py for the layout).
Each is read through `records.read_version_record` into a typed `VersionRecord`, so a damaged one
raises RegistryDamaged naming the file, and `scan` lists the healthy versions beside the damaged ones."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import read_json, storage_errors
from cifarflow.registry.records import (
    RegistryDamaged,
    RegistryError,
    VersionRecord,
    read_version_record,
    version_fix,
)

VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")
VERSION_FILES = ("model.keras", "version.json", "metrics.json", "predictions.npy", "labels.npy")


@dataclass(frozen=True)
class Version:
    name: str  # "v3"
    directory: Path
    record: VersionRecord  # its version.json, typed (records.py)

    @property
    def number(self) -> int:
        return int(self.name[1:])

    # the fields every client reads, as shortcuts to the record's

    @property
    def model_id(self) -> str:
        """sha256 of model.keras."""
        return self.record.model_id

    @property
    def preset(self) -> str:
        return self.record.preset

    @property
    def accuracy(self) -> float:
        """Test accuracy, 0..1."""
        return self.record.accuracy

    @property
    def run_name(self) -> str:
        return self.record.run_name

    @property
    def dataset_version(self) -> str:
        return self.record.dataset_version

    @property
    def test_set_sha256(self) -> str:
        return self.record.test_set_sha256

    @property
    def batch_ids(self) -> tuple[str, ...]:
        """The added batches it trained on (none when the record predates them)."""
        return self.record.batch_ids or ()

    @property
    def normalization(self) -> str | None:
        return self.record.normalization

    @property
    def replaced(self) -> str | None:
        """The model id of the champion it replaced (None for a first champion)."""
        return self.record.replaced

    @property
    def promoted_at(self) -> str:
        return self.record.promoted_at or ""

    @property
    def model_path(self) -> Path:
        return self.directory / "model.keras"

    @property
    def export_dir(self) -> Path:
        return self.directory / "export"


@dataclass(frozen=True)
class Results:
    """A version's scores on its test set: what McNemar's test pairs a challenger's with."""

    predictions: np.ndarray  # predicted label per test image (int64)
    labels: np.ndarray  # true label per test image (int64)
    metrics: dict[str, Any]  # its evaluation metrics.json


def read_results(version: Version) -> Results:
    """The version's predictions, labels and metrics; RegistryDamaged when one is cut short or unreadable."""
    try:
        predictions = np.load(version.directory / "predictions.npy").astype(np.int64)
        labels = np.load(version.directory / "labels.npy").astype(np.int64)
        metrics = read_json(version.directory / "metrics.json")
    except (OSError, ValueError) as error:  # a truncated .npy or metrics.json
        damage = f"{type(error).__name__}: {error}"
        raise RegistryDamaged(version.directory, damage, version_fix(version.directory), version.name) from None
    return Results(predictions, labels, metrics)


def versions_dir(registry: Path) -> Path:
    return Path(registry) / "versions"


def staging_dir(registry: Path) -> Path:
    return Path(registry) / ".staging"


def is_whole(directory: Path) -> bool:
    return all((directory / name).is_file() for name in VERSION_FILES) and (directory / "export").is_dir()


def load_version(directory: Path, name: str | None = None) -> Version:
    """The version in `directory`, which must be named `name` when given (in the registry), else is
    named by its version.json (a version folder copied elsewhere); RegistryDamaged when a file is
    missing or version.json cannot be read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RegistryDamaged(directory, "not a folder", version_fix(directory), name)
    missing = [n for n in VERSION_FILES if not (directory / n).is_file()]
    missing += [] if (directory / "export").is_dir() else ["export/"]
    record = None if "version.json" in missing else read_version_record(directory / "version.json", name)
    if missing:  # after the record: a damaged version.json is named before a missing file
        raise RegistryDamaged(directory, f"{', '.join(missing)} missing", version_fix(directory), name)
    return Version(name or record.version or directory.name, directory, record)


def read_version(registry: Path, name: str) -> Version:
    """One version by name (`v3`). RegistryError names the versions there are when it does not exist;
    RegistryDamaged names the file when it exists but cannot be read."""
    if not VERSION_NAME.match(name):
        raise RegistryError(f"{name!r} is not a version name: versions are v1, v2, … (see `registry.py list`)")
    directory = versions_dir(registry) / name
    if not directory.exists():
        known = ", ".join(v.name for v in list_versions(registry)) or "none yet"
        raise RegistryError(f"no version {name} in {registry} (versions: {known})")
    return load_version(directory, name)


@dataclass(frozen=True)
class Scan:
    versions: list[Version]  # the healthy ones, oldest first
    damaged: list[RegistryDamaged]  # the others (`.version` is each one's name), oldest first


def scan(registry: Path) -> Scan:
    """Every version, healthy or damaged; reading one damaged version never hides the others."""
    root = versions_dir(registry)
    names = [p.name for p in root.iterdir() if VERSION_NAME.match(p.name)] if root.is_dir() else []
    versions, damaged = [], []
    for name in sorted(names, key=lambda n: int(n[1:])):
        try:
            versions.append(load_version(root / name, name))
        except RegistryDamaged as damage:
            damaged.append(damage)
    return Scan(versions, damaged)


def list_versions(registry: Path) -> list[Version]:
    """Every healthy version, oldest first (`scan` also says which are damaged)."""
    return scan(registry).versions


def version_of_model(registry: Path, model_id: str) -> Version | None:
    """The version holding this model (by the model file's sha256), if it was ever registered."""
    return next((v for v in list_versions(registry) if v.model_id == model_id), None)


def next_name(registry: Path) -> str:
    root = versions_dir(registry)
    names = [path.name for path in root.iterdir()] if root.is_dir() else []
    numbers = [int(name[1:]) for name in names if VERSION_NAME.match(name)]
    return f"v{max(numbers, default=0) + 1}"


def new_staging(registry: Path) -> Path:
    """An empty directory to build a version in; leftovers of killed runs are removed first."""
    root = staging_dir(registry)
    with storage_errors(root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        return Path(tempfile.mkdtemp(dir=root))


def commit_version(registry: Path, staging: Path, name: str) -> Version:
    """Rename a fully built staging directory to `versions/<name>`: the version appears whole or not at all."""
    target = versions_dir(registry) / name
    if target.exists():
        raise RegistryError(f"version {name} exists already; versions are never overwritten")
    if not is_whole(staging):
        raise RegistryError(f"{staging} is not a complete version")
    with storage_errors(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staging, 0o755)
        os.replace(staging, target)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # .staging/ when nothing else is being built
    return read_version(registry, name)
