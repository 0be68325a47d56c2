"""The `champion` alias: which version batch prediction, the service and warm starts use, how it
moves (by a promotion or by hand, every move recorded), how a backup's stand-in for its link is
recognised and repaired, and everything damaged in the registry (see store.py for the layout)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarflow.files import field_problem, point_symlink, storage_errors, write_json
from cifarflow.registry.model_versions import (
    VERSION_NAME,
    Version,
    clear_abandoned,
    list_versions,
    read_version,
    scan,
    versions_dir,
)
from cifarflow.registry.records import (
    CHOOSE_CHAMPION,
    MOVE_FIELDS,
    RegistryDamaged,
    RegistryError,
    append_line,
    bad_lines_damage,
    read_json_file,
    read_lines,
    read_version_record,
)

ALIAS = "champion"
POINTER = "champion.json"
LINK_TEXT = re.compile(r"^(?:\./)?versions/(v[1-9][0-9]*)/?$")  # a link a tool stored as a text file


class AliasMoved(RuntimeError):
    """The champion moved since a promotion judged against it (a rollback by hand meanwhile): the
    promotion must be decided again against the new champion (the promote task's retry does)."""


def alias_path(registry: Path) -> Path:
    return Path(registry) / ALIAS


def pointer_path(registry: Path) -> Path:
    return Path(registry) / POINTER


@dataclass(frozen=True)
class Pointer:
    """Where the alias points, and what said so."""

    version: str  # "v3"
    model_id: str | None  # the model it should hold (None when read from a bare link)
    source: Path  # champion.json, or the `champion` link, text file or folder copy of an older registry


def read_pointer(registry: Path) -> Pointer | None:
    """The alias as recorded: champion.json, else (an older registry) the `champion` link, a text file
    holding the link, or a backup's folder copy of a version; None when there is no champion yet.
    RegistryDamaged when what is there cannot be read."""
    registry = Path(registry)
    pointer = pointer_path(registry)
    if pointer.exists() or pointer.is_symlink():
        data = read_json_file(pointer, CHOOSE_CHAMPION)
        fields = {"version": (str,), "model_id": (str,)}
        problem = field_problem(data, fields, tuple(fields))
        if problem is None and not VERSION_NAME.match(data["version"]):
            problem = f"{data['version']!r} is not a version name"
        if problem is not None:
            raise RegistryDamaged(pointer, problem, CHOOSE_CHAMPION)
        return Pointer(data["version"], data["model_id"], pointer)
    link = alias_path(registry)
    if link.is_symlink():
        target = os.readlink(link)
        if not VERSION_NAME.match(Path(target).name):
            raise RegistryDamaged(link, f"a link to {target}, not to a version", CHOOSE_CHAMPION)
        return Pointer(Path(target).name, None, link)
    if link.is_dir():
        copied = copy_of(registry, link)
        if copied is not None:
            return Pointer(copied.name, copied.model_id, link)
        if (link / "champion.json").is_file():
            return None  # a champion from before versions existed: the next pipeline run adopts it (upgrade.py)
        raise RegistryDamaged(link, "a folder that is not a copy of any version", _clear_link_fix(link))
    if link.is_file():
        name = link_text(link)
        if name is None:
            raise RegistryDamaged(link, "a file that is not a link to a version", _clear_link_fix(link))
        return Pointer(name, None, link)
    return None


def champion_name(registry: Path) -> str | None:
    """The version the alias points at (`v3`), or None when there is no champion yet; RegistryDamaged
    when the alias cannot be read."""
    pointer = read_pointer(registry)
    return pointer.version if pointer else None


def read_champion_version(registry: Path) -> Version | None:
    """The champion, or None when there is no champion yet. RegistryDamaged names the file when the
    alias or the version it names cannot be read, or names a version that is not there."""
    pointer = read_pointer(registry)
    if pointer is None:
        return None
    if not (versions_dir(registry) / pointer.version).exists():
        known = ", ".join(v.name for v in list_versions(registry)) or "none"
        problem = f"it names {pointer.version}, which is not in the registry (versions: {known})"
        raise RegistryDamaged(pointer.source, problem, CHOOSE_CHAMPION)
    try:
        version = read_version(registry, pointer.version)
    except RegistryDamaged as damage:
        raise champion_damage(registry, damage) from None
    if pointer.model_id is not None and pointer.model_id != version.model_id:
        raise RegistryDamaged(
            pointer.source,
            f"it names {version.name} holding model {pointer.model_id[:12]}…, but versions/{version.name} holds "
            f"{version.model_id[:12]}…",
            CHOOSE_CHAMPION,
        )
    return version


def champion_damage(registry: Path, damage: RegistryDamaged) -> RegistryDamaged:
    """A version's `damage`, with what to do about a damaged champion when it is the champion: restore
    the file, or make the newest healthy version the champion."""
    if damage.version is None or damage.version != _readable_champion(registry):
        return damage
    healthy = [v.name for v in scan(registry).versions]
    fix = (
        f"restore it from a backup, or make {healthy[-1]} the champion: `python flows/registry_flow.py promote "
        f'{healthy[-1]} --reason "{damage.version} is damaged"`'
        if healthy
        else "restore it from a backup, or run the pipeline to register a new champion"
    )
    return RegistryDamaged(damage.path, damage.problem, fix, damage.version)


def copy_of(registry: Path, folder: Path) -> Version | None:
    """The version `folder` is a copy of (its version.json is that version's), or None."""
    try:
        record = read_version_record(folder / "version.json", None)
        version = read_version(registry, record.version or "")
    except RegistryError:
        return None
    return version if version.record == record else None


def link_text(path: Path) -> str | None:
    """The version a small text file standing for the link names (`versions/v3`), or None."""
    try:
        if path.stat().st_size > 256:
            return None
        match = LINK_TEXT.match(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return match.group(1) if match else None


def _clear_link_fix(link: Path) -> str:
    return (
        f"move it out of the registry (it is not read: the champion is recorded in {POINTER}); the next "
        f"pipeline run or `registry.py promote` puts the `{ALIAS}` link back"
    )


UNCHECKED = object()


def move_alias(
    registry: Path, name: str, by: str, reason: str, expected_from: object = UNCHECKED, now: datetime | None = None
) -> dict[str, Any]:
    """Point `champion` at version `name` and record the move (from, to, by, reason). With
    `expected_from`, move only if the champion is still that version (AliasMoved otherwise).

    Moves are serialized by an exclusive lock on `.alias.lock`. The move is one atomic rename of
    champion.json, which carries the move's record; the record is then appended to aliases.jsonl (a
    kill in between is completed by `alias_moves`, which reads both). So there is never a record of a
    move that did not happen, nor a move without a record (promotion's rolled-back rule reads them).
    RegistryError, RegistryDamaged: `name` is not a whole version, or `champion` holds something that
    is neither a link nor a copy of a version; nothing is changed then."""
    if not reason.strip():
        raise RegistryError("moving the champion needs a reason; it is recorded with the move")
    registry = Path(registry)
    version = read_version(registry, name)
    with storage_errors(registry), alias_lock(registry):
        current = _readable_champion(registry)
        if expected_from is not UNCHECKED and current != expected_from:
            raise AliasMoved(f"the champion is {current} now, not {expected_from} as when this promotion was decided")
        check_link_place(registry)
        _tidy(registry)
        entry = {
            "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "alias": ALIAS,
            "from": current,
            "to": version.name,
            "model_id": version.model_id,
            "by": by,
            "reason": reason.strip(),
        }
        _log_pending_move(registry)
        write_json(pointer_path(registry), {"version": version.name, "model_id": version.model_id, "move": entry})
        append_line(registry / "aliases.jsonl", entry)
        _point_link(registry, version)
    return entry


def repair_alias(registry: Path, log: Callable[[str], None] = print) -> None:
    """Bring the alias to the current form, under the alias lock: champion.json written from an older
    registry's link or folder copy, the `champion` link put back where a backup turned it into a
    folder or dropped it, a move a kill cut short logged, leftovers of killed moves removed.
    RegistryDamaged when the alias or the champion cannot be read (nothing is changed then)."""
    registry = Path(registry)
    if not registry.is_dir():
        return
    with storage_errors(registry), alias_lock(registry):
        _tidy(registry)
        pointer = read_pointer(registry)
        if pointer is None:
            return
        version = read_champion_version(registry)
        if pointer.source != pointer_path(registry):
            write_json(pointer_path(registry), {"version": version.name, "model_id": version.model_id})
            log(f"registry: the champion alias ({version.name}) is now recorded in {POINTER}")
        finished = _log_pending_move(registry)
        if finished is not None:
            log(
                f"registry: finished: the move {finished['from'] or '(none)'} → {finished['to']} by {finished['by']} "
                "that a killed command left unrecorded is now in aliases.jsonl"
            )
        link = alias_path(registry)
        if not (link.is_symlink() and os.readlink(link) == os.path.relpath(version.directory, registry)):
            check_link_place(registry)
            was = (
                f"a link to {os.readlink(link)}"
                if link.is_symlink()
                else "a folder copy"
                if link.is_dir()
                else "a text file"
                if link.exists()
                else "missing"
            )
            _point_link(registry, version)
            log(f"registry: the `{ALIAS}` link to versions/{version.name} was put back (it was {was})")


def _readable_champion(registry: Path) -> str | None:
    """The champion's name for a move's record; None when there is none, or the alias is damaged
    (a move by hand is how a damaged alias is repaired)."""
    try:
        return champion_name(registry)
    except RegistryDamaged:
        return None


def check_link_place(registry: Path) -> None:
    """RegistryDamaged unless `champion` is absent, a link, or a stand-in a backup left for one."""
    link = alias_path(registry)
    if link.is_symlink() or not link.exists():
        return
    if link.is_dir() and copy_of(registry, link) is None:
        raise RegistryDamaged(link, "a folder that is not a copy of any version", _clear_link_fix(link))
    if link.is_file() and link_text(link) is None:
        raise RegistryDamaged(link, "a file that is not a link to a version", _clear_link_fix(link))


def _point_link(registry: Path, version: Version) -> None:
    """Make `champion` a relative link to the version, replacing a backup's stand-in for it. On a
    file system without symbolic links champion.json alone is the alias, and no stale link is left."""
    link = alias_path(registry)
    try:
        if link.is_dir() and not link.is_symlink():
            _discard(link)  # a copy of a version (checked by check_link_place)
        elif link.is_file() and not link.is_symlink():
            link.unlink()
        point_symlink(link, version.directory)
    except OSError:
        with contextlib.suppress(OSError):
            if link.is_symlink():
                link.unlink()
        _tidy(registry)  # point_symlink's temporary link


def _discard(folder: Path) -> None:
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.discard")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _tidy(registry: Path) -> None:
    """Remove what killed moves left (we hold the alias lock: no move is under way)."""
    for pattern in (f".{ALIAS}.*.tmp", f".{POINTER}.*.part"):
        for stale in registry.glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()
    for stale in registry.glob(f".{ALIAS}.*.discard"):
        shutil.rmtree(stale, ignore_errors=True)


def _pointer_move(registry: Path) -> dict[str, Any] | None:
    """The move record champion.json carries, if it is readable."""
    try:
        move = read_json_file(pointer_path(registry), CHOOSE_CHAMPION).get("move")
    except (RegistryDamaged, AttributeError):
        return None
    return move if field_problem(move, MOVE_FIELDS, tuple(MOVE_FIELDS)) is None else None


def _log_pending_move(registry: Path) -> dict[str, Any] | None:
    """Append champion.json's move to aliases.jsonl if a kill kept it from there; the move, if it did."""
    move = _pointer_move(registry)
    if move is not None and move not in read_lines(registry / "aliases.jsonl", MOVE_FIELDS)[0]:
        append_line(registry / "aliases.jsonl", move)
        return move
    return None


def recover(registry: Path, log: Callable[[str], None] = print) -> None:
    """Finish or undo what a killed command left, saying which: builds of versions in `.staging/` that
    no living process holds are removed (undone: a version exists only once committed), a move missing
    from aliases.jsonl is recorded and the `champion` link put back (finished: `repair_alias`).
    RegistryDamaged when the alias or the champion cannot be read (after the builds are cleared)."""
    if not Path(registry).is_dir():
        return
    with storage_errors(registry):
        for line in clear_abandoned(registry):
            log(line)
    repair_alias(registry, log)


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
    """Every move of the alias, oldest first: aliases.jsonl's whole records, and the move in
    champion.json if a kill kept it from reaching aliases.jsonl."""
    moves = read_lines(Path(registry) / "aliases.jsonl", MOVE_FIELDS)[0]
    pending = _pointer_move(Path(registry))
    return moves + [pending] if pending is not None and pending not in moves else moves


def problems(registry: Path) -> list[RegistryDamaged]:
    """Everything damaged in the registry, each naming its file and what to do: versions, the alias,
    what stands at `champion`, and unreadable lines of the two logs."""
    registry = Path(registry)
    if not registry.is_dir():
        return []
    found = list(scan(registry).damaged)
    for check in (read_champion_version, check_link_place):
        try:
            check(registry)
        except RegistryDamaged as damage:  # the champion's own damage comes with its fix (champion_damage)
            found = [d for d in found if (d.path, d.problem) != (damage.path, damage.problem)] + [damage]
    for name, fields in (("aliases.jsonl", MOVE_FIELDS), ("decisions.jsonl", None)):
        try:
            bad = read_lines(registry / name, fields)[1]
        except RegistryDamaged as damage:
            found.append(damage)
            continue
        if bad:
            found.append(bad_lines_damage(registry / name, bad))
    return found
