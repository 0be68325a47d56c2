"""The model registry on disk: every promoted model is an immutable, numbered version; `champion` is
an alias that moves between versions, by a promotion or by hand, and every move is recorded.

    <data dir>/registry/
        versions/v1/             one promoted model, never changed after it is written:
            model.keras          the trained Keras model (uint8 pixels in, the fitted transform inside)
            export/              the exported inference artifact (a TensorFlow SavedModel, see export.py)
            version.json         who it is: model sha256, preset, run, accuracy, dataset version, decision
            metrics.json         its evaluation metrics
            predictions.npy      its predicted label for every test image (int16), for McNemar's test
            labels.npy           the true labels of that test set (int16)
            smoke.json           the smoke test it passed before it was registered
        champion -> versions/vN  a relative symlink: a move is one atomic rename, readers see old or new
        aliases.jsonl            every move of the alias: when, from, to, by whom (promotion | hand), why
        decisions.jsonl          every champion/challenger decision, promoted or not
        .staging/                versions being built; never read, cleared when the next one starts

A version directory appears whole (built in `.staging/`, then renamed), so a failed export or smoke
test leaves nothing behind, and a version that exists is always complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarflow.errors import PipelineInputError
from cifarflow.files import point_symlink, read_json, storage_errors

ALIAS = "champion"
VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")
VERSION_FILES = ("model.keras", "version.json", "metrics.json", "predictions.npy", "labels.npy")


class RegistryError(PipelineInputError):
    """A registry request that cannot be met (an unknown version, a missing reason)."""


class AliasMoved(RuntimeError):
    """The champion moved since a promotion judged against it (a rollback by hand meanwhile): the
    promotion must be decided again against the new champion (the promote task's retry does)."""


@dataclass(frozen=True)
class Version:
    name: str  # "v3"
    directory: Path
    record: dict[str, Any]  # version.json

    @property
    def number(self) -> int:
        return int(self.name[1:])

    @property
    def model_id(self) -> str:
        return self.record["id"]

    @property
    def accuracy(self) -> float:
        return float(self.record["accuracy"])

    @property
    def model_path(self) -> Path:
        return self.directory / "model.keras"

    @property
    def export_dir(self) -> Path:
        return self.directory / "export"


def versions_dir(registry: Path) -> Path:
    return Path(registry) / "versions"


def alias_path(registry: Path) -> Path:
    return Path(registry) / ALIAS


def staging_dir(registry: Path) -> Path:
    return Path(registry) / ".staging"


def is_whole(directory: Path) -> bool:
    return all((directory / name).is_file() for name in VERSION_FILES) and (directory / "export").is_dir()


def read_version(registry: Path, name: str) -> Version:
    """One version by name (`v3`); RegistryError names the versions there are when it does not exist."""
    if not VERSION_NAME.match(name):
        raise RegistryError(f"{name!r} is not a version name: versions are v1, v2, … (see `registry.py list`)")
    directory = versions_dir(registry) / name
    if not is_whole(directory):
        known = ", ".join(v.name for v in list_versions(registry)) or "none yet"
        raise RegistryError(f"no version {name} in {registry} (versions: {known})")
    return Version(name, directory, read_json(directory / "version.json"))


def list_versions(registry: Path) -> list[Version]:
    """Every whole version, oldest first."""
    root = versions_dir(registry)
    if not root.is_dir():
        return []
    found = [
        Version(path.name, path, read_json(path / "version.json"))
        for path in root.iterdir()
        if VERSION_NAME.match(path.name) and is_whole(path)
    ]
    return sorted(found, key=lambda version: version.number)


def champion_name(registry: Path) -> str | None:
    """The version the alias points at (`v3`), or None when there is no champion yet."""
    try:
        target = os.readlink(alias_path(registry))
    except OSError:
        return None
    name = Path(target).name
    return name if VERSION_NAME.match(name) else None


def read_champion_version(registry: Path) -> Version | None:
    name = champion_name(registry)
    if name is None:
        return None
    try:
        return read_version(registry, name)
    except (RegistryError, OSError, ValueError):
        return None


def find_model(registry: Path, model_id: str) -> Version | None:
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


UNCHECKED = object()


def move_alias(
    registry: Path, name: str, by: str, reason: str, expected_from: object = UNCHECKED, now: datetime | None = None
) -> dict[str, Any]:
    """Point `champion` at version `name` and record the move (from, to, by, reason) in aliases.jsonl.
    With `expected_from`, move only if the champion is still that version (AliasMoved otherwise).

    Moves are serialized by an exclusive lock on `.alias.lock`; the record is written before the
    symlink moves, so a kill in between leaves a record of a move that a rerun completes, never a
    move without a record (the rolled-back rule reads the records)."""
    if not reason.strip():
        raise RegistryError("moving the champion needs a reason; it is recorded with the move")
    version = read_version(registry, name)
    with storage_errors(Path(registry)), alias_lock(registry):
        current = champion_name(registry)
        if expected_from is not UNCHECKED and current != expected_from:
            raise AliasMoved(f"the champion is {current} now, not {expected_from} as when this promotion was decided")
        entry = {
            "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "alias": ALIAS,
            "from": current,
            "to": version.name,
            "model_id": version.model_id,
            "by": by,
            "reason": reason.strip(),
        }
        append_line(Path(registry) / "aliases.jsonl", entry)
        point_symlink(alias_path(registry), version.directory)
    return entry


@contextlib.contextmanager
def alias_lock(registry: Path):
    """An exclusive flock held for the few milliseconds of a move (released by the kernel if we die)."""
    Path(registry).mkdir(parents=True, exist_ok=True)
    with open(Path(registry) / ".alias.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alias_moves(registry: Path) -> list[dict[str, Any]]:
    return read_lines(Path(registry) / "aliases.jsonl")


def demoted_by_hand(registry: Path, model_id: str) -> dict[str, Any] | None:
    """The move *by hand* away from the version holding this model, if that is the last word a
    person said about it: a model someone rolled back from is not promoted again by the nightly
    run, until someone moves the alias back to it by hand."""
    version = find_model(registry, model_id)
    if version is None:
        return None
    said = [m for m in alias_moves(registry) if m["by"] == "hand" and version.name in (m["from"], m["to"])]
    last = said[-1] if said else None
    return last if last and last["from"] == version.name and last["to"] != version.name else None


def append_line(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line, one write(2) in append mode: whole or absent, even with two writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True, default=str) + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash; the others stand
            continue
    return out
