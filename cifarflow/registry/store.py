"""The model registry (`<data dir>/registry/`): `versions/vN/`, each sealed by every file's sha256; `aliases.jsonl`,
every move of the champion (the last whole line names it); `decisions.jsonl`; `.staging/`, builds under way.
Readers raise RegistryDamaged naming the file, what is wrong and what to do."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np

from cifarflow.data.shards import data_set_words
from cifarflow.errors import PipelineInputError
from cifarflow.files import field_problem, file_digest, read_json, storage_errors, write_json
from cifarflow.lock import DataDirLocked, data_dir_lock
from cifarflow.registry.onnx_export import FILE as ONNX_FILE

ALIAS = "champion"
MOVES = "aliases.jsonl"
DECISIONS = "decisions.jsonl"
VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")
VERSION_FILES = ("model.keras", "version.json", "metrics.json", "predictions.npy", "labels.npy")
MOVE_FIELDS = {"at": (str,), "from": (str, type(None)), "to": (str,), "by": (str,), "reason": (str,)}
JSON_NAMES = {"model_id": "id", "preset": "model", "dataset_version": "dataset_sha256"}  # version.json's (and /model's)
SEAL = "record_sha256"  # the sha256 of version.json's JSON without this field (sorted keys, no spaces)
CHOOSE_CHAMPION = (
    "choose the champion again with `python flows/registry_flow.py promote vN --reason …` "
    "(`python flows/registry_flow.py list` shows the versions)"
)
UNCHECKED = object()


class RegistryError(PipelineInputError):
    """A registry request that cannot be met (an unknown version, a missing reason)."""


class RegistryDamaged(RegistryError):
    """`path` is damaged or missing: `problem` says how, `fix` what to do; `version` the version it belongs to."""

    def __init__(self, path: Path, problem: str, fix: str, version: str | None = None):
        self.path, self.problem, self.fix, self.version = Path(path), problem, fix, version
        super().__init__(f"{path} is damaged ({problem}): {fix}")


class AliasMoved(RuntimeError):
    """The champion moved since a promotion judged against it: decide again (the promote task's retry does)."""


@dataclass(frozen=True)
class VersionRecord:
    """A version's version.json, typed; on disk three fields keep their JSON names (JSON_NAMES)."""

    model_id: str  # sha256 of model.keras
    preset: str
    accuracy: float  # test accuracy, 0..1
    run_name: str  # the pipeline run that trained it
    dataset_version: str  # the dataset version it trained on (cifarflow.data.dataset_versions)
    test_set_sha256: str  # the test images and labels it was scored on: McNemar's pairing
    version: str | None = None  # its own name (v3); None until it is staged
    label_names: tuple[str, ...] = ()
    batch_ids: tuple[str, ...] = ()  # the added batches it trained on
    normalization: str | None = None  # the fitted transform's kind
    replaced: str | None = None  # the model id of the champion it replaced (None: the first champion)
    promoted_at: str = ""  # ISO 8601, UTC
    test_images: int | None = None
    decision: str | None = None  # the summary of the decision that promoted it
    source_model: str | None = None  # the model file it was copied from (relative to the data dir when in it)
    smoke: dict[str, Any] | None = None  # the smoke test it passed (cifarflow.registry.saved_model)
    note: str | None = None
    temperature: float | None = None  # the calibration temperature traced into its export (None: none)
    test_set_decisions: int | None = None  # promotion decisions its test set had served, its own included
    files: dict[str, dict[str, Any]] | None = None  # path in the folder → {size: bytes, sha256: hex}, once committed
    image_size: int | None = None  # the side S of the (S, S, 3) images it takes (None: registered before it was kept)
    dataset: dict[str, Any] | None = None  # {dataset_sha256, source {kind, uri, sha256}, split} it was trained on

    @classmethod
    def from_json(cls, data: dict[str, Any], **extra: Any) -> Self:
        """The record of version.json's `data`, unknown fields left out; KeyError or TypeError if it is none."""
        attributes = {JSON_NAMES.get(f.name, f.name): f.name for f in fields(VersionRecord)}
        values = {attributes[key]: value for key, value in data.items() if key in attributes}
        values |= {key: tuple(values.get(key) or ()) for key in ("label_names", "batch_ids")}
        return cls(**values | {"accuracy": float(values["accuracy"])}, **extra)

    def to_json(self) -> dict[str, Any]:
        """version.json's content, without its seal; a None field is left out."""
        data = {JSON_NAMES.get(f.name, f.name): getattr(self, f.name) for f in fields(VersionRecord)}
        return {key: list(v) if isinstance(v, tuple) else v for key, v in data.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class Version(VersionRecord):
    """A registered version: its record, sealed and checked, and its folder."""

    directory: Path

    @property
    def name(self) -> str:
        return self.version or self.directory.name

    @property
    def model_path(self) -> Path:
        return self.directory / "model.keras"

    @property
    def export_dir(self) -> Path:
        return self.directory / "export"

    @property
    def onnx_path(self) -> Path:
        """Its ONNX export (cifarflow.registry.onnx_export); absent in versions registered before it was made."""
        return self.directory / ONNX_FILE

    @property
    def side(self) -> int:
        """Its image size; of a version registered before it was kept, its export's input shape [None, S, S, 3]."""
        from cifarflow.registry.saved_model import METADATA, export_image_size

        return self.image_size or export_image_size(read_json(self.export_dir / METADATA))

    def data_set_difference(self, label_names: list[str], image_size: int) -> str:
        """'' when it classifies `label_names` (in order) at `image_size`, else what differs, in words."""
        if list(self.label_names) == list(label_names) and self.side == image_size:
            return ""
        theirs = data_set_words(self.label_names, self.side)
        return f"classifies {theirs}, this run's model {data_set_words(label_names, image_size)}"


def versions_dir(registry: Path) -> Path:
    return Path(registry) / "versions"


def version_fix(directory: Path) -> str:
    return (
        f"restore it from a backup; or move the folder {directory} out of the registry and, if it was "
        f"the champion, {CHOOSE_CHAMPION}"
    )


def read_json_file(path: Path, fix: str, version: str | None = None) -> Any:
    """The JSON in `path`; RegistryDamaged when it is missing, unreadable, empty or not JSON."""
    try:
        data = Path(path).read_bytes()
        if not data.strip():
            raise RegistryDamaged(path, "empty file", fix, version)
        return json.loads(data)
    except FileNotFoundError:
        raise RegistryDamaged(path, "missing", fix, version) from None
    except json.JSONDecodeError as error:
        problem = f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        raise RegistryDamaged(path, problem, fix, version) from None
    except (OSError, ValueError) as error:  # ValueError: not UTF-8
        raise RegistryDamaged(path, f"cannot be read: {error}", fix, version) from None


def record_digest(data: dict[str, Any]) -> str:
    """The sha256 of version.json's JSON `data` without its seal (sorted keys, no spaces)."""
    body = {key: value for key, value in data.items() if key != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_version(directory: Path, name: str | None = None) -> Version:
    """The version in `directory`, its seal and every file checked; RegistryDamaged names the first damaged file."""
    directory, fix = Path(directory), version_fix(Path(directory))
    if not directory.is_dir():
        raise RegistryDamaged(directory, "not a folder", fix, name)
    path = directory / "version.json"
    data = read_json_file(path, fix, name)
    if not isinstance(data, dict) or SEAL not in data:
        raise RegistryDamaged(path, "not a sealed version record (no `record_sha256`)", fix, name)
    if data[SEAL] != record_digest(data):
        problem = "changed since it was registered: its content does not match its `record_sha256`"
        raise RegistryDamaged(path, problem, fix, name)
    version = Version.from_json(data, directory=directory)
    if name is not None and version.name != name:
        raise RegistryDamaged(path, f"it says it is {version.name}, but lies in {name}/", fix, name)
    damage = []
    for relative, registered in sorted((version.files or {}).items()):
        file = directory / relative
        try:
            if not file.is_file():
                damage.append((relative, "missing"))
            elif file.stat().st_size != registered["size"]:
                damage.append((relative, f"{file.stat().st_size:,} bytes, {registered['size']:,} when registered"))
            elif file_digest(file) != registered["sha256"]:
                damage.append((relative, "changed since it was registered: another sha256, same size"))
        except OSError as error:
            damage.append((relative, f"cannot be read: {error.strerror or error}"))
    if damage:
        (first, problem), others = damage[0], damage[1:]
        if others:
            problem += "; also damaged: " + ", ".join(f"{path} ({what})" for path, what in others[:5])
        raise RegistryDamaged(directory / first, problem, fix, name)
    return version


def read_version(registry: Path, name: str) -> Version:
    """One version by name (`v3`); RegistryError names the versions there are, RegistryDamaged the damage."""
    if not VERSION_NAME.match(name):
        raise RegistryError(f"{name!r} is not a version name: versions are v1, v2, … (see `registry_flow.py list`)")
    if not (versions_dir(registry) / name).exists():
        raise RegistryError(f"no version {name} in {registry} (versions: {known_versions(registry, 'none yet')})")
    try:
        return load_version(versions_dir(registry) / name, name)
    except RegistryDamaged as damage:
        raise champion_damage(registry, damage) from None


def version_names(registry: Path) -> list[str]:
    root = versions_dir(registry)
    names = [p.name for p in root.iterdir() if VERSION_NAME.match(p.name)] if root.is_dir() else []
    return sorted(names, key=lambda n: int(n[1:]))


def scan(registry: Path) -> tuple[list[Version], list[RegistryDamaged]]:
    """(the healthy versions, the others' damage), oldest first."""
    versions, damaged = [], []
    for name in version_names(registry):
        try:
            versions.append(load_version(versions_dir(registry) / name, name))
        except RegistryDamaged as damage:
            damaged.append(damage)
    return versions, damaged


def list_versions(registry: Path) -> list[Version]:
    """Every healthy version, oldest first."""
    return scan(registry)[0]


def known_versions(registry: Path, none: str) -> str:
    return ", ".join(v.name for v in list_versions(registry)) or none


def version_of_model(registry: Path, model_id: str) -> Version | None:
    """The version holding this model (the sha256 of its file), if it was ever registered."""
    return next((v for v in list_versions(registry) if v.model_id == model_id), None)


def next_name(registry: Path) -> str:
    names = version_names(registry)
    return f"v{int(names[-1][1:]) + 1 if names else 1}"


def read_results(version: Version) -> dict[str, Any]:
    """The version's test set `predictions`, `labels` (N,) int64 and `metrics`; RegistryDamaged if unreadable."""
    try:
        predictions = np.load(version.directory / "predictions.npy").astype(np.int64)
        labels = np.load(version.directory / "labels.npy").astype(np.int64)
        return {"predictions": predictions, "labels": labels, "metrics": read_json(version.directory / "metrics.json")}
    except (OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
        raise RegistryDamaged(version.directory, problem, version_fix(version.directory), version.name) from None


_BUILDS: dict[Path, contextlib.ExitStack] = {}  # this process's builds: folder → its held build lock


def _build_lock(registry: Path, timeout_s: float, log: Callable[[str], None] = print):
    return data_dir_lock(Path(registry) / ".build.lock", timeout_s, log, holder_kind="registry build")


def new_staging(registry: Path, name: str = "", log: Callable[[str], None] = print, timeout_s: float = 1800) -> Path:
    """An empty `.staging/<name>`, built under the build lock until `commit_version` or `discard_staging`."""
    for directory in [d for d in _BUILDS if d.parent == Path(registry) / ".staging"]:
        discard_staging(directory)  # left by this process, which builds one version at a time
    with storage_errors(Path(registry)), contextlib.ExitStack() as hold:
        hold.enter_context(_build_lock(registry, timeout_s, log))
        _clear_staging(registry, log)
        directory = Path(registry) / ".staging" / (name or "build")
        directory.mkdir(parents=True)
        _BUILDS[directory] = hold.pop_all()  # held past this block, until commit_version or discard_staging
    return directory


def _clear_staging(registry: Path, log: Callable[[str], None]) -> None:
    root = Path(registry) / ".staging"
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        what = f"version {path.name}" if VERSION_NAME.match(path.name) else "a version"
        log(
            f"registry: undone: the build of {what} that a killed command left in {path} was removed (it was never "
            "registered; the pipeline builds it again if it still promotes the model)"
        )
    shutil.rmtree(root, ignore_errors=True)


def discard_staging(directory: Path) -> None:
    """Delete a build of this process (if it was not committed) and release its lock."""
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()  # .staging/ when it is empty
    _BUILDS.pop(Path(directory), contextlib.ExitStack()).close()


def commit_version(registry: Path, staging: Path, name: str) -> Version:
    """Seal `staging` (each file's size and sha256, then the record's) and rename it to `versions/<name>`, whole."""
    target = versions_dir(registry) / name
    if target.exists():
        raise RegistryError(f"version {name} exists already; versions are never overwritten")
    if not (all((staging / f).is_file() for f in VERSION_FILES) and (staging / "export").is_dir()):
        raise RegistryError(f"{staging} is not a complete version")
    with storage_errors(target.parent):
        files = {
            path.relative_to(staging).as_posix(): {"size": path.stat().st_size, "sha256": file_digest(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file() and path.name != "version.json"
        }
        data = read_json(staging / "version.json") | {"version": name, "files": files}
        VersionRecord.from_json(data)  # KeyError or TypeError: not a version's record
        write_json(staging / "version.json", data | {SEAL: record_digest(data)})
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staging, 0o755)
        os.replace(staging, target)
    discard_staging(staging)  # only releases the lock: the folder is renamed
    return read_version(registry, name)


def read_lines(path: Path, fields: dict[str, tuple[type, ...]] | None = None) -> list[tuple[int, dict | None]]:
    """(line number, record or None if not a JSON object with `fields`) per whole line; a cut-short last is skipped."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise RegistryDamaged(path, f"cannot be read: {error.strerror or error}", "fix its permissions") from None
    lines = []
    for number, line in enumerate(text[: text.rfind("\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        lines.append((number, entry if field_problem(entry, fields or {}, tuple(fields or ())) is None else None))
    return lines


def append_line(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line in one write(2) in append mode, fsynced: whole or absent, even with two writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True, default=str) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def alias_moves(registry: Path) -> list[dict[str, Any]]:
    """Every move of the champion, oldest first: {at, from, to, by (promotion | hand), reason, model_id}."""
    return [entry for _, entry in read_lines(Path(registry) / MOVES, MOVE_FIELDS) if entry is not None]


def champion_name(registry: Path) -> str | None:
    """The `to` of aliases.jsonl's last whole line (`v3`), None before the first move; else RegistryDamaged."""
    path = Path(registry) / MOVES
    lines = read_lines(path, MOVE_FIELDS)
    if not lines:
        if path.exists():
            raise RegistryDamaged(path, "no whole line", CHOOSE_CHAMPION)
        return None
    number, move = lines[-1]
    if move is None or not VERSION_NAME.match(move["to"]):
        raise RegistryDamaged(path, f"its last line ({number}) is not a whole move to a version", CHOOSE_CHAMPION)
    return move["to"]


def read_champion_version(registry: Path) -> Version | None:
    """The champion, or None when there is none yet; RegistryDamaged names the damaged alias or version."""
    name = champion_name(registry)
    if name is None:
        return None
    if not (versions_dir(registry) / name).exists():
        problem = f"it names {name}, which is not in the registry (versions: {known_versions(registry, 'none')})"
        raise RegistryDamaged(Path(registry) / MOVES, problem, CHOOSE_CHAMPION)
    return read_version(registry, name)


def champion_damage(registry: Path, damage: RegistryDamaged) -> RegistryDamaged:
    """`damage`, with the fix for a damaged champion if it is the champion: make the newest healthy one it."""
    if damage.version is None or damage.version != readable_champion(registry):
        return damage
    healthy = [v.name for v in list_versions(registry)]
    fix = (
        f"restore it from a backup, or make {healthy[-1]} the champion: `python flows/registry_flow.py promote "
        f'{healthy[-1]} --reason "{damage.version} is damaged"`'
        if healthy
        else "restore it from a backup, or run the pipeline to register a new champion"
    )
    return RegistryDamaged(damage.path, damage.problem, fix, damage.version)


def readable_champion(registry: Path) -> str | None:
    """The champion's name; None when there is none, or the alias is damaged (a move by hand repairs it)."""
    try:
        return champion_name(registry)
    except RegistryDamaged:
        return None


def _alias_lock(registry: Path) -> contextlib.AbstractContextManager:
    return data_dir_lock(Path(registry) / ".alias.lock", holder_kind="move of the champion")


def move_alias(
    registry: Path, name: str, by: str, reason: str, expected_from: object = UNCHECKED, now: datetime | None = None
) -> dict[str, Any]:
    """Append the move to version `name` to aliases.jsonl (`from` None repairs a damaged alias); AliasMoved if the
    champion is not `expected_from`; RegistryError: no reason or no such version."""
    if not reason.strip():
        raise RegistryError("moving the champion needs a reason; it is recorded with the move")
    registry = Path(registry)
    version = read_version(registry, name)
    with storage_errors(registry), _alias_lock(registry):
        _finish_moves(registry, log=lambda line: None)
        current = readable_champion(registry)
        if expected_from is not UNCHECKED and current != expected_from:
            raise AliasMoved(f"the champion is {current} now, not {expected_from} as when this promotion was decided")
        at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        entry = {"at": at, "from": current, "to": version.name, "model_id": version.model_id, "by": by}
        entry["reason"] = reason.strip()
        append_line(registry / MOVES, entry)
    return entry


def _finish_moves(registry: Path, log: Callable[[str], None]) -> None:
    """Under the alias lock: drop a move's half line; convert the landed main's champion.json and `champion` link."""
    path = registry / MOVES
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1) if b"\n" in data else path.unlink()
        log(f"registry: undone: a move of the champion that a killed command left half-written in {path}")
    old = registry / "champion.json"
    if old.exists():
        with contextlib.suppress(RegistryDamaged, AttributeError):
            move = read_json_file(old, "").get("move")
            if field_problem(move, MOVE_FIELDS, tuple(MOVE_FIELDS)) is None and move not in alias_moves(registry):
                append_line(path, move)
        old.unlink()
        log(f"registry: converted: the champion is recorded in {MOVES} alone (champion.json removed)")
    if (registry / ALIAS).is_symlink():
        (registry / ALIAS).unlink()
        log("registry: the `champion` link was removed: `python flows/registry_flow.py path` prints the folder")


def recover(registry: Path, log: Callable[[str], None] = print) -> None:
    """Undo what a killed command left (builds nobody holds, a move's half line) and convert the landed form."""
    registry = Path(registry)
    if not registry.is_dir():
        return
    with storage_errors(registry):
        with contextlib.suppress(DataDirLocked), _build_lock(registry, timeout_s=0):
            _clear_staging(registry, log)  # unless a build is under way
        with _alias_lock(registry):
            _finish_moves(registry, log)


def problems(registry: Path) -> list[RegistryDamaged]:
    """Everything damaged (versions, the champion, unreadable lines of the two logs), each with its fix."""
    registry = Path(registry)
    found = scan(registry)[1]
    try:
        read_champion_version(registry)
    except RegistryDamaged as damage:  # the champion's own damage comes with its fix (champion_damage)
        found = [d for d in found if d.path != damage.path] + [damage]
    for name, fields_ in ((MOVES, MOVE_FIELDS), (DECISIONS, None)):
        try:
            lines = read_lines(registry / name, fields_)
        except RegistryDamaged as damage:
            found.append(damage)
            continue
        bad = [number for number, entry in lines[: -1 if name == MOVES else None] if entry is None]
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", …" if len(bad) > 10 else "")
            problem = f"line {shown} is not a whole record" if len(bad) == 1 else f"lines {shown} are not whole records"
            fix = "every other line stands; delete or repair what is named (each line is one JSON object)"
            found.append(RegistryDamaged(registry / name, f"{problem}, skipped", fix))
    return found


def record_decision(
    registry: Path, decision: Any, run_name: str, now: datetime | None = None, test_set_sha256: str | None = None
) -> None:
    """Append `decision.to_json()` to decisions.jsonl with when, the run and the test set it was made on."""
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    entry = {"at": at, "run_name": run_name, "test_set_sha256": test_set_sha256} | decision.to_json()
    append_line(Path(registry) / DECISIONS, entry)


def read_decisions(registry: Path) -> list[dict[str, Any]]:
    """Every decision, oldest first (a line that is not a whole record is skipped: `problems` names it)."""
    return [entry for _, entry in read_lines(Path(registry) / DECISIONS) if entry is not None]


def decisions_on_test_set(registry: Path, test_set_sha256: str) -> tuple[int, int]:
    """(decisions that judged a model on this test set, decisions logged before the log named test sets)."""
    decisions = read_decisions(registry)
    judged = sum(
        d.get("test_set_sha256") == test_set_sha256 and d.get("reason") != "already-champion" for d in decisions
    )
    return judged, sum("test_set_sha256" not in d for d in decisions)
