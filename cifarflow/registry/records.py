"""The registry's files as typed records, read in one place: a file that is empty, cut short, not
JSON, or edited by hand into something else raises `RegistryDamaged`, which names the file, what is
wrong with it and what to do, instead of a JSONDecodeError or KeyError somewhere downstream.

`version.json` is declared once here: `VersionRecord` is its typed form, and `VERSION_FIELDS` maps
each JSON field to the record's attribute and the types it accepts. Every reader uses the record's
attributes; only `VersionRecord.from_json` and `to_json` know the JSON names. Two of them are
historical and stay as they are, so registries written before and after read the same and the
service's `/model` answer keeps its shape: `model` holds the preset (`VersionRecord.preset`) and
`dataset_sha256` the dataset *version* id (`VersionRecord.dataset_version`: a digest over the
ingested shards and the added batches, `cifarflow.data.dataset_versions`). New files write the old names, and
only them: one name per field on disk, readable by older code too; nothing needs upgrading.

**Seal.** A version registered since file digests were recorded carries `files`, the size and sha256
of every other file in its folder, and `record_sha256`, the sha256 of its own JSON without that field
(`sealed`); `read_version_record` checks the latter, `versions.file_damage` the former. A version
without them was registered before (unverified: `versions.file_damage` checks what it can).

The append-only logs (`aliases.jsonl`, `decisions.jsonl`) are read line by line: a line that is not a
whole record is skipped and reported with its number, and every other line stands.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cifarflow.errors import PipelineInputError
from cifarflow.files import field_problem

CHOOSE_CHAMPION = (
    "choose the champion again with `python flows/registry_flow.py promote vN --reason …` "
    "(`python flows/registry_flow.py list` shows the versions)"
)

# version.json: JSON field → (VersionRecord attribute, accepted types; None: may be null). The first six
# are required; the fields from `test_images` on were not checked before, so they may also be null.
_NULL = type(None)
VERSION_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "id": ("model_id", (str,)),  # sha256 of model.keras
    "model": ("preset", (str,)),
    "accuracy": ("accuracy", (int, float)),  # test accuracy, 0..1
    "temperature": ("temperature", (int, float, _NULL)),  # traced into export/ (null: none, an older version)
    "run_name": ("run_name", (str,)),
    "dataset_sha256": ("dataset_version", (str,)),  # the dataset version it trained on
    "test_set_sha256": ("test_set_sha256", (str,)),  # the test images it was scored on (McNemar's pairing)
    "version": ("version", (str,)),  # its own name, v1, v2, …
    "label_names": ("label_names", (list,)),
    "batch_ids": ("batch_ids", (list,)),
    "normalization": ("normalization", (str, _NULL)),
    "replaced": ("replaced", (str, _NULL)),  # the model id of the champion it replaced
    "promoted_at": ("promoted_at", (str,)),
    "test_images": ("test_images", (int, _NULL)),
    "decision": ("decision", (str, _NULL)),  # the decision's summary
    "source_model": ("source_model", (str, _NULL)),  # the model file it was copied from
    "smoke": ("smoke", (dict, _NULL)),  # the smoke test it passed (null: adopted from an older registry)
    "note": ("note", (str, _NULL)),
    "test_set_decisions": ("test_set_decisions", (int, _NULL)),  # promotion decisions its test set served
    "files": ("files", (dict, _NULL)),  # every other file of the version: path → {size, sha256} (null: unverified)
}
SEAL = "record_sha256"  # beside the fields: the sha256 of version.json's JSON without it (`record_digest`)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Fields only shown to people, never decided on: one of the wrong type (a hand edit) is read as absent
# rather than making the whole version damaged, as before they were typed.
INFORMATIONAL = ("test_images", "decision", "source_model", "smoke", "note", "temperature", "test_set_decisions")
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    name: types for name, (_, types) in VERSION_FIELDS.items() if name not in INFORMATIONAL
}
REQUIRED_FIELDS = ("id", "model", "accuracy", "run_name", "dataset_sha256", "test_set_sha256")
ALWAYS_WRITTEN = ("normalization", "replaced")  # written even when null: null says something there
MOVE_FIELDS: dict[str, tuple[type, ...]] = {
    "at": (str,),
    "from": (str, type(None)),
    "to": (str,),
    "by": (str,),
    "reason": (str,),
}


class RegisteredFile(NamedTuple):
    """A file of a version as it was registered."""

    size: int  # bytes
    sha256: str  # hex


@dataclass(frozen=True)
class VersionRecord:
    """What a registry version's version.json says about it, typed (see the module docstring for the
    two JSON names that differ). Optional fields an older registry did not write are None."""

    model_id: str  # sha256 of model.keras
    preset: str  # the preset that built it
    accuracy: float  # test accuracy, 0..1
    run_name: str  # the pipeline run that trained it
    dataset_version: str  # the dataset version it trained on
    test_set_sha256: str  # the test images and labels it was scored on: what McNemar's pairing needs
    version: str | None = None  # its own name (v3); None until it is staged
    label_names: tuple[str, ...] = ()
    batch_ids: tuple[str, ...] | None = None  # the added batches it trained on (None: not recorded)
    normalization: str | None = None  # the fitted transform's kind
    replaced: str | None = None  # the model id of the champion it replaced (None: the first champion)
    promoted_at: str | None = None
    test_images: int | None = None
    decision: str | None = None  # the summary of the decision that promoted it
    source_model: str | None = None  # the model file it was copied from, relative to the data dir when in it
    smoke: dict[str, Any] | None = None  # the smoke test it passed (None: adopted without one)
    note: str | None = None
    temperature: float | None = None  # the calibration temperature its export applies (None: none recorded)
    test_set_decisions: int | None = None  # promotion decisions its test set had served, its own included
    files: dict[str, RegisteredFile] | None = None  # path in the version folder → as registered (None: unverified)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VersionRecord:
        """The record of version.json's `data`, already checked by `version_problem`; unknown fields
        (an older registry's) are left out."""
        values = {
            attribute: data[name]
            for name, (attribute, types) in VERSION_FIELDS.items()
            if name in data and (name not in INFORMATIONAL or isinstance(data[name], types))
        }
        for attribute in ("label_names", "batch_ids"):
            if values.get(attribute) is not None:
                values[attribute] = tuple(values[attribute])
        if values.get("files") is not None:
            values["files"] = {path: RegisteredFile(**entry) for path, entry in values["files"].items()}
        values["accuracy"] = float(values["accuracy"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """version.json's content: every field under its JSON name; a None field is left out, except
        those in ALWAYS_WRITTEN."""
        data = {}
        for name, (attribute, _) in VERSION_FIELDS.items():
            value = getattr(self, attribute)
            if isinstance(value, tuple):
                value = list(value)
            if name == "files" and value is not None:
                value = {path: entry._asdict() for path, entry in sorted(value.items())}
            if value is not None or name in ALWAYS_WRITTEN:
                data[name] = value
        return data


class RegistryError(PipelineInputError):
    """A registry request that cannot be met (an unknown version, a missing reason)."""


class RegistryDamaged(RegistryError):
    """A registry file or folder is damaged, missing or was edited into something unreadable. The
    message names it (`path`), says what is wrong (`problem`) and what to do (`fix`)."""

    def __init__(self, path: Path, problem: str, fix: str, version: str | None = None):
        self.path, self.problem, self.fix, self.version = Path(path), problem, fix, version
        super().__init__(f"{path} is damaged ({problem}): {fix}")


def version_fix(directory: Path) -> str:
    return (
        f"restore it from a backup; or move the folder {directory} out of the registry and, if it was "
        f"the champion, {CHOOSE_CHAMPION}"
    )


def read_json_file(path: Path, fix: str, version: str | None = None) -> Any:
    """The JSON in `path`; RegistryDamaged when it cannot be read, is empty or is not JSON."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryDamaged(path, "missing", fix, version) from None
    except OSError as error:
        raise RegistryDamaged(path, f"cannot be read: {error.strerror or error}", fix, version) from None
    if not data.strip():
        raise RegistryDamaged(path, "empty file", fix, version)
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise RegistryDamaged(
            path, f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}", fix, version
        ) from None
    except ValueError:  # not UTF-8
        raise RegistryDamaged(path, "not JSON text (binary data)", fix, version) from None


def read_version_record(path: Path, name: str | None) -> VersionRecord:
    """A version's version.json as a typed record, checked against VERSION_FIELDS and its seal (and,
    given its `name`, that it says it is that version); RegistryDamaged says what is wrong."""
    fix = version_fix(Path(path).parent)
    data = read_json_file(path, fix, name)
    problem = version_problem(data)
    if problem is None and name is not None and data.get("version", name) != name:
        problem = f"it says it is {data['version']}, but lies in {name}/"
    if problem is None and (SEAL in data or data.get("files") is not None) and data.get(SEAL) != record_digest(data):
        problem = "changed since it was registered: its content does not match its `record_sha256`"
    if problem is not None:
        raise RegistryDamaged(path, problem, fix, name)
    return VersionRecord.from_json(data)


def version_problem(data: Any) -> str | None:
    """Why `data` is not the content of a version.json, or None."""
    problem = field_problem(data, RECORD_FIELDS, REQUIRED_FIELDS)
    if problem is None:
        lists = [k for k in ("label_names", "batch_ids") if not all(isinstance(x, str) for x in data.get(k) or ())]
        problem = f"`{lists[0]}` holds something other than text" if lists else None
    if problem is None and data.get("files") is not None:
        bad = next((path for path, entry in data["files"].items() if not _registered_file(path, entry)), None)
        problem = f"`files` entry {bad!r} is not a path in the folder with its size and sha256" if bad else None
    return problem


def _registered_file(path: str, entry: Any) -> bool:
    parts = Path(path).parts
    return (
        bool(parts)
        and not Path(path).is_absolute()
        and ".." not in parts
        and isinstance(entry, dict)
        and entry.keys() == {"size", "sha256"}
        and isinstance(entry["size"], int)
        and not isinstance(entry["size"], bool)
        and entry["size"] >= 0
        and isinstance(entry["sha256"], str)
        and bool(_SHA256.match(entry["sha256"]))
    )


def record_digest(data: dict[str, Any]) -> str:
    """The sha256 of version.json's JSON `data` without its seal (sorted keys, no spaces)."""
    body = {key: value for key, value in data.items() if key != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(data: dict[str, Any], files: dict[str, RegisteredFile]) -> dict[str, Any]:
    """version.json's JSON `data` with the version's `files` recorded, sealed with `record_sha256`."""
    data = data | {"files": {path: entry._asdict() for path, entry in sorted(files.items())}}
    return data | {SEAL: record_digest(data)}


def read_lines(path: Path, fields: dict[str, tuple[type, ...]] | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a JSON-lines file (JSON objects; with `fields`, only those that have every one
    of them with its type), and the numbers of the lines that are not one (skipped)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return [], []
    except OSError as error:
        raise RegistryDamaged(path, f"cannot be read: {error.strerror or error}", "fix its permissions") from None
    entries, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and (fields is None or field_problem(entry, fields, tuple(fields)) is None):
            entries.append(entry)
        else:
            bad.append(number)
    return entries, bad


def bad_lines_damage(path: Path, numbers: list[int]) -> RegistryDamaged:
    shown = ", ".join(map(str, numbers[:10])) + (", …" if len(numbers) > 10 else "")
    problem = f"line {shown} is not a whole record" if len(numbers) == 1 else f"lines {shown} are not whole records"
    return RegistryDamaged(
        path,
        f"{problem}, skipped",
        "every other line stands; delete or repair what is named (each line is one JSON object)",
    )


def append_line(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line, one write(2) in append mode: whole or absent, even with two writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True, default=str) + "\n").encode())
    finally:
        os.close(fd)
