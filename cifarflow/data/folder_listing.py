"""The names in a labeled image folder or an archive of one: its class folders and their order, its layout (given
train/ and test/, or held-out), and the files below the class folders, relative to its root (POSIX). Names only:
nothing here decodes an image."""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from pathlib import Path

from cifarflow.errors import PipelineInputError
from cifarflow.paths import printable

SPLITS = ("train", "test")  # the given layout's folders, in row order
CLASSES_FILE = "classes.txt"  # at the root: the class order, one name a line
MAX_CLASSES = 256  # labels are one byte
IGNORED = "__MACOSX"  # the resource forks macOS puts in a zip: hidden like a name starting with '.'


@dataclass(frozen=True)
class FolderShape:
    label_names: tuple[str, ...]  # classes.txt's order, else the class folders' names sorted
    layout: str  # "given" (train/ and test/ folders) or "held-out" (class folders at the root)


@dataclass(frozen=True)
class Listing:
    """What a folder source holds: its shape and the files below its class folders, relative to its root."""

    shape: FolderShape
    files: list[str]  # in the source's own order (an archive's member order)
    links: list[str]  # archive members that are links, not files: listed as skipped
    prefix: str = ""  # an archive's one top folder, stripped from every member name


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == IGNORED


def _shape(where: str, children: Callable[[str], list[str]], classes_text: bytes | None) -> FolderShape:
    """The shape of a tree whose sub-folders `children(relative folder)` lists ("" the root); errors name `where`."""
    top = children("")
    split_folders = [name for name in top if name in SPLITS]
    if split_folders:
        if len(split_folders) == 1:
            have, lack = split_folders[0], next(s for s in SPLITS if s != split_folders[0])
            raise PipelineInputError(
                f"{where} has {have}/ but no {lack}/: add {lack}/<class>/… beside it, or put the class folders "
                f"at the root (without train/ and test/) to have a test split held out"
            )
        beside = [name for name in top if name not in SPLITS]
        if beside:
            raise PipelineInputError(
                f"{where} has train/ and test/ beside other folders ({', '.join(beside)}): move them into train/ "
                f"or test/ as class folders, or out of the folder"
            )
        found = sorted(set(children("train")) | set(children("test")))
    else:
        found = top
    layout = "given" if split_folders else "held-out"
    in_place = f"{where}/train and {where}/test" if split_folders else where
    if len(found) < 2:
        what = f"one class folder ({found[0]})" if found else "no class folders"
        raise PipelineInputError(
            f"{in_place} holds {what}: put each class's images in a folder named after the class "
            f"(<class>/… or train/<class>/… and test/<class>/…); a classifier needs at least 2 classes"
        )
    unnamable = [printable(name) for name in found if printable(name) != name]
    if unnamable:
        raise PipelineInputError(
            f"{in_place} has class folders whose names are not UTF-8 text ({', '.join(unnamable)}): a class name "
            f"is shown, stored and sent as UTF-8; rename them"
        )
    if len(found) > MAX_CLASSES:
        raise PipelineInputError(
            f"{in_place} holds {len(found)} class folders; at most {MAX_CLASSES} classes are supported (labels are "
            f"one byte): merge classes or split the data set"
        )
    return FolderShape(_class_order(where, found, classes_text), layout)


def _class_order(where: str, found: list[str], classes_text: bytes | None) -> tuple[str, ...]:
    if classes_text is None:
        return tuple(sorted(found))
    try:
        text = classes_text.decode("utf-8-sig")  # Notepad starts its UTF-8 with a byte-order mark
    except UnicodeDecodeError:
        raise PipelineInputError(f"{where}/{CLASSES_FILE} is not UTF-8 text: save it as UTF-8") from None
    listed = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    unknown, unlisted = [n for n in listed if n not in found], [n for n in found if n not in listed]
    if repeated or unknown or unlisted:
        problems = [
            f"repeats {', '.join(repeated)}" if repeated else "",
            f"names {', '.join(unknown)}, which are not class folders" if unknown else "",
            f"leaves out {', '.join(unlisted)}" if unlisted else "",
        ]
        raise PipelineInputError(
            f"{where}/{CLASSES_FILE} {'; '.join(p for p in problems if p)}: list each class folder's name exactly "
            f"once, one a line (or remove {CLASSES_FILE} for sorted names)"
        )
    return tuple(listed)


def place(shape: FolderShape, name: str) -> tuple[str | None, int] | None:
    """(split or None when held out, class index) of a file's relative name; None when not below a class folder."""
    parts = name.split("/")
    split = parts.pop(0) if shape.layout == "given" else None
    if len(parts) < 2 or parts[0] not in shape.label_names or (shape.layout == "given" and split not in SPLITS):
        return None
    return split, shape.label_names.index(parts[0])


# ---- a folder on disk ----------------------------------------------------------------------------------------


def _subfolders(folder: Path) -> list[str]:
    """Names of `folder`'s visible sub-folders (symlinked ones included), sorted; [] when it is not a folder."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if not _hidden(entry.name) and entry.is_dir())


def directory_shape(path: Path) -> FolderShape:
    if not path.is_dir():
        raise PipelineInputError(f"{path} is not a folder, a .tar.gz/.tgz/.tar/.zip of one or the CIFAR-10 archive")
    classes = path / CLASSES_FILE
    try:
        return _shape(
            str(path), lambda folder: _subfolders(path / folder), classes.read_bytes() if classes.is_file() else None
        )
    except OSError as error:
        raise PipelineInputError(
            f"cannot list {error.filename or path}: {error.strerror}; fix its permissions"
        ) from error


def directory_listing(path: Path) -> Listing:
    """The shape and files of a folder on disk: every visible file at any depth below each class folder (sorted
    by name a folder at a time, symlinked folders followed, a folder already visited in this class skipped)."""
    shape = directory_shape(path)
    tops = [f"{split}/" for split in SPLITS] if shape.layout == "given" else [""]
    files = []
    for top in tops:
        for name in shape.label_names:
            folder = path / top / name
            if folder.is_dir():
                stat = folder.stat()
                files.extend(_walk(folder, f"{top}{name}", {(stat.st_dev, stat.st_ino)}))
    return Listing(shape, files, [])


def _walk(folder: Path, relative: str, seen: set[tuple[int, int]]) -> Iterator[str]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=attrgetter("name"))
    except OSError as error:
        raise PipelineInputError(f"cannot list {folder}: {error.strerror}; fix its permissions or move it") from error
    for entry in entries:
        if _hidden(entry.name):
            continue
        name = f"{relative}/{entry.name}"
        try:
            stat = entry.stat() if entry.is_dir() else None  # follows a symlink
        except OSError:  # a link to itself, or gone since the listing: ingest lists it as skipped, with why
            stat = None
        if stat is not None:  # a cycle (or a folder linked twice) is visited once
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                yield from _walk(Path(entry.path), name, seen)
        elif entry.is_symlink() or entry.is_file(follow_symlinks=False):  # a broken link too: skipped, with why
            yield name


# ---- an archive of a folder ------------------------------------------------------------------------------------


def members(path: Path) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """(name, kind: "file" | "dir" | "link" | "other", read) of each member in stored order, streamed; `read()`
    only before the next member. PipelineInputError for an archive that cannot be read."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    yield info.filename, "dir" if info.is_dir() else "file", partial(archive.read, info)
        else:
            with tarfile.open(path, "r|*") as archive:
                for member in archive:
                    kind = "file" if member.isfile() else "dir" if member.isdir() else "other"
                    kind = "link" if member.issym() or member.islnk() else kind
                    yield member.name, kind, partial(_read_member, archive, member)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as error:
        raise PipelineInputError(
            f"{path} is not a readable {''.join(path.suffixes[-2:]) or 'archive'} ({error}): it may be truncated; "
            f"make it again, or pass the folder itself as --source"
        ) from error


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return archive.extractfile(member).read()


def member_parts(path: Path, name: str) -> list[str]:
    """A member name's parts ('.' and empty ones dropped); PipelineInputError for an absolute name or '..'."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise PipelineInputError(
            f"{path} holds a member named {name!r}, which points outside the archive; refusing to read it. "
            f"Make the archive again from inside the folder (member names relative to it)"
        )
    return parts


def archive_listing(path: Path) -> Listing:
    """The shape and files of an archive of a folder, from one streamed pass over its member names (an archive
    whose members all sit in one top folder, not train/ or test/, has that folder as its root)."""
    entries, texts = [], {}
    for name, kind, read in members(path):
        parts = member_parts(path, name)
        if parts and not any(_hidden(part) for part in parts):
            entries.append(("/".join(parts), kind))
            if kind == "file" and parts[-1] == CLASSES_FILE and len(parts) <= 2:
                texts["/".join(parts)] = read()
    tops = {name.split("/")[0] for name, _ in entries}
    wrapper = next(iter(tops)) if len(tops) == 1 else None
    nested = wrapper not in (None, *SPLITS) and any("/" in name for name, _ in entries)
    prefix = f"{wrapper}/" if nested else ""
    folders: dict[str, set[str]] = {}
    for name, kind in entries:
        parts = name.removeprefix(prefix).split("/") if name.startswith(prefix) else []
        for depth in range(1, len(parts) if kind != "dir" else len(parts) + 1):
            folders.setdefault("/".join(parts[: depth - 1]), set()).add(parts[depth - 1])
    where = f"{path}" + (f" (inside its top folder {prefix})" if prefix else "")
    shape = _shape(where, lambda folder: sorted(folders.get(folder, ())), texts.get(f"{prefix}{CLASSES_FILE}"))
    relative = [(name.removeprefix(prefix), kind) for name, kind in entries if name.startswith(prefix)]
    placed = [(name, kind) for name, kind in relative if kind in ("file", "link") and place(shape, name)]
    files = [name for name, kind in placed if kind == "file"]
    return Listing(shape, files, [name for name, kind in placed if kind == "link"], prefix)


def folder_listing(path: Path) -> Listing:
    """`describe_folder`'s shape with the files below the class folders (a folder's or an archive's)."""
    path = Path(path)
    return archive_listing(path) if path.is_file() else directory_listing(path)
