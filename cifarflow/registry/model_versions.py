"""Registry versions on disk: each promoted model is an immutable, numbered folder
`versions/vN/`, built whole in `.staging/` and renamed into place (see store.py for the layout).
Each is read through `records.read_version_record` into a typed `VersionRecord`, so a damaged one
raises RegistryDamaged naming the file, and `scan` lists the healthy versions beside the damaged ones.

**Every file is checked at every load.** `commit_version` records each file's size and sha256 in
version.json (`files`, sealed: records.py); `load_version` compares the folder with them
(`file_damage`: missing, another size, another sha256; extra files are ignored), so a cut
`saved_model.pb`, an emptied `export/cifarflow.json` or a missing `variables/` is named by every
command that reads the version. Hashing costs about 0.6 ms per MB from the page cache (measured: a
4.8 MB `seed` version 4 ms, a 16 MB `fast`-sized one 10 ms), little beside loading its SavedModel.
A version registered before (no `files`) is *unverified*: its files are checked for presence, its
JSON files for being readable, and model.keras against the record's model id (its sha256).

**A build killed half-way is undone.** Each build in `.staging/` is held by its process with a lock
(`.staging/<build>.lock`, released by the kernel when the process dies); `clear_abandoned` removes the
builds nobody holds and says so (the registry's commands and the pipeline call it first, `alias.recover`).
A build is never read: a version exists only once renamed into `versions/`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from cifarflow.files import file_digest, read_json, storage_errors, write_json
from cifarflow.registry.records import (
    RegisteredFile,
    RegistryDamaged,
    RegistryError,
    VersionRecord,
    read_json_file,
    read_version_record,
    sealed,
    version_fix,
)

VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")
VERSION_FILES = ("model.keras", "version.json", "metrics.json", "predictions.npy", "labels.npy")
# what an unverified version (registered before `files`) must hold, and which of it must be readable JSON
UNVERIFIED_FILES = (
    *VERSION_FILES,
    "export/saved_model.pb",
    "export/variables/variables.index",
    "export/cifarflow.json",
)
UNVERIFIED_JSON = ("metrics.json", "export/cifarflow.json")


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
    named by its version.json (a version folder copied elsewhere), every file checked against what was
    registered (`file_damage`). RegistryDamaged names the first damaged file, what is wrong with it
    (and the other damaged files) and what to do."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RegistryDamaged(directory, "not a folder", version_fix(directory), name)
    record = read_version_record(directory / "version.json", name)
    damage = file_damage(directory, record)
    if damage:
        (first, problem), others = damage[0], damage[1:]
        if others:
            shown = ", ".join(f"{path} ({what})" for path, what in others[:5]) + (", …" if len(others) > 5 else "")
            problem += f"; also damaged: {shown}"
        raise RegistryDamaged(directory / first, problem, version_fix(directory), name)
    return Version(name or record.version or directory.name, directory, record)


def file_damage(directory: Path, record: VersionRecord) -> list[tuple[str, str]]:
    """(path in the folder, what is wrong) for each damaged file, in path order; a missing folder is
    named once (`export/variables/`). Against `record.files` when it has them (size, then sha256);
    else (unverified) UNVERIFIED_FILES must be there, UNVERIFIED_JSON readable, and model.keras have the
    sha256 of the record's `id`."""
    damage: dict[str, str] = {}
    if record.files is None:
        for path in UNVERIFIED_FILES:
            if not (directory / path).is_file():
                damage.setdefault(*_missing(directory, path))
        for path in UNVERIFIED_JSON:
            if path not in damage and (directory / path).is_file():
                try:
                    read_json_file(directory / path, "")
                except RegistryDamaged as unreadable:
                    damage[path] = unreadable.problem
        if "model.keras" not in damage and file_digest(directory / "model.keras") != record.model_id:
            damage["model.keras"] = "changed since it was registered: its sha256 is not the version's model id"
        return sorted(damage.items())
    for path, registered in sorted(record.files.items()):
        try:
            size = (directory / path).stat().st_size if (directory / path).is_file() else None
        except OSError as error:
            damage[path] = f"cannot be read: {error.strerror or error}"
            continue
        if size is None:
            damage.setdefault(*_missing(directory, path))
        elif size != registered.size:
            damage[path] = f"{size:,} bytes, {registered.size:,} when registered"
        elif file_digest(directory / path) != registered.sha256:
            damage[path] = "changed since it was registered: another sha256, same size"
    return sorted(damage.items())


def _missing(directory: Path, path: str) -> tuple[str, str]:
    """(`path`, "missing"), or (its first missing folder, "folder missing") (`export/variables`)."""
    parts = Path(path).parts
    for end in range(1, len(parts)):
        if not directory.joinpath(*parts[:end]).is_dir():
            return "/".join(parts[:end]), "folder missing"
    return path, "missing"


def registered_files(directory: Path) -> dict[str, RegisteredFile]:
    """Every file under `directory` but version.json: path (with `/`) → size and sha256."""
    files = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(directory).as_posix()
        if relative != "version.json":
            files[relative] = RegisteredFile(path.stat().st_size, file_digest(path))
    return files


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


_HELD: dict[Path, IO] = {}  # the builds this process holds: build folder → its open, locked .lock file


def new_staging(registry: Path, name: str = "", log=print) -> Path:
    """An empty folder in `.staging/` to build version `name` in, held by this process (see the module
    docstring) until `commit_version` or `discard_staging`; abandoned builds are removed first (said
    through `log`)."""
    root = staging_dir(registry)
    with storage_errors(root):
        for line in clear_abandoned(registry):
            log(line)
        root.mkdir(parents=True, exist_ok=True)
        handle, lock_name = None, ""
        while handle is None:  # locked before the folder exists: a folder whose lock nobody holds is abandoned
            lock_fd, lock_name = tempfile.mkstemp(prefix=f"{name or 'build'}.", suffix=".lock", dir=root)
            handle = os.fdopen(lock_fd, "w")
            fcntl.flock(handle, fcntl.LOCK_EX)
            if not os.path.exists(lock_name):  # a cleaner took it for a stray lock in between: another one
                handle = handle.close()
        directory = Path(lock_name[: -len(".lock")])
        directory.mkdir()
        _HELD[directory] = handle
        return directory


def clear_abandoned(registry: Path) -> list[str]:
    """Remove the builds in `.staging/` that no living process holds (killed mid-way, or left by this
    process: it builds one version at a time); one sentence for each."""
    root = staging_dir(registry)
    if not root.is_dir():
        return []
    for directory in list(_HELD):
        if directory.parent == root:
            discard_staging(directory)
    said = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        lock = directory.with_name(directory.name + ".lock")
        with contextlib.ExitStack() as held:
            if lock.exists():
                handle = held.enter_context(open(lock, "a"))
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being built right now
            if not directory.exists():
                continue  # committed (renamed into versions/) or discarded meanwhile
            shutil.rmtree(directory, ignore_errors=True)
            lock.unlink(missing_ok=True)
        what = directory.name.split(".")[0]
        version = f"version {what}" if VERSION_NAME.match(what) else "a version"
        said.append(
            f"registry: undone: the build of {version} that a killed command left in {directory} was removed "
            "(it was never registered; the pipeline builds it again if it still promotes the model)"
        )
    for lock in root.glob("*.lock"):  # a lock whose folder is gone (killed between the two deletions)
        if not lock.with_name(lock.name[: -len(".lock")]).exists():
            with open(lock, "a") as handle, contextlib.suppress(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # when nothing else is being built
    return said


def discard_staging(directory: Path) -> None:
    """Delete a build of this process and let go of it."""
    shutil.rmtree(directory, ignore_errors=True)
    _release(directory)


def _release(directory: Path) -> None:
    handle = _HELD.pop(Path(directory), None)
    directory.with_name(directory.name + ".lock").unlink(missing_ok=True)
    if handle is not None:
        handle.close()  # the lock goes with it
    with contextlib.suppress(OSError):
        directory.parent.rmdir()  # .staging/ when nothing else is being built


def commit_version(registry: Path, staging: Path, name: str) -> Version:
    """Seal a fully built staging folder (every file's size and sha256 into its version.json), then
    rename it to `versions/<name>`: the version appears whole or not at all."""
    target = versions_dir(registry) / name
    if target.exists():
        raise RegistryError(f"version {name} exists already; versions are never overwritten")
    if not is_whole(staging):
        raise RegistryError(f"{staging} is not a complete version")
    read_version_record(staging / "version.json", name)  # RegistryDamaged unless it is a version's record
    with storage_errors(target.parent):
        record = read_json(staging / "version.json")  # as written, fields unknown to VersionRecord included
        write_json(staging / "version.json", sealed(record, registered_files(staging)))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staging, 0o755)
        os.replace(staging, target)
    _release(staging)
    return read_version(registry, name)
