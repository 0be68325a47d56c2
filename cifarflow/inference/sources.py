"""PATH arguments → the image files to score: files as given (even with glob characters in the name),
folders recursively, glob patterns; every file left out is listed in `Selection.skipped` with the reason."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from cifarflow.errors import PipelineInputError
from cifarflow.intake.images import EXTENSIONS
from cifarflow.paths import file_problem, printable, walk


class UnusableArguments(PipelineInputError):
    """A PATH that names nothing, or a selection with no image files in it."""


@dataclass
class Selection:
    files: list[Path] = field(default_factory=list)  # absolute, each once, in the order given
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (printable path, why it is not scored)


def skip_reason(path: Path, root: Path) -> str | None:
    """Why a file found inside a folder is not scored (None: it is)."""
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return "hidden (a name starting with '.'): name it directly to score it"
    if path.suffix.lower() not in EXTENSIONS:
        return f"extension {printable(path.suffix) or '(none)'!r} is not one of {', '.join(sorted(EXTENSIONS))}"
    return None


def images_in(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files under `folder` at any depth, in path order; hidden (`.DS_Store`) and other files go to `skipped`."""
    selected = []
    for found in walk(folder):
        reason = found.problem or skip_reason(found.path, folder)
        if reason is None:
            selected.append(found.path)
        elif skipped is not None:
            skipped.append((printable(found.path), reason))
    return sorted(selected)


def pattern_matches(argument: str) -> list[Path]:
    """Matches of a glob pattern, its longest existing folder prefix read as written (`photos [2024]/*.jpg`)."""
    parts = Path(argument).parts
    for cut in range(len(parts) - 1, 0, -1):
        prefix = Path(*parts[:cut])
        if glob.has_magic(str(prefix)) and prefix.is_dir():
            argument = str(Path(glob.escape(str(prefix)), *parts[cut:]))
            break
    return sorted(Path(match) for match in glob.glob(argument, recursive=True))


def select_files(arguments: list[str], allow_empty: bool = False) -> Selection:
    """The files to score, each once by real path, in order: files named, the images of folders and patterns (the
    rest in `skipped`). UnusableArguments for a PATH naming nothing or unreadable, or no images unless `allow_empty`."""
    selection = Selection()
    files: dict[str, Path] = {}  # real path → the path as reached first
    for argument in arguments:
        for path in argument_files(argument, selection.skipped):
            files.setdefault(os.path.realpath(path), path.absolute())
    selection.files = list(files.values())
    if not files and not allow_empty:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in selection.skipped[:3])
        raise UnusableArguments(
            f"no image files in {printable(' '.join(arguments)) or '(no PATH given)'} "
            f"(looked for {', '.join(sorted(EXTENSIONS))})" + (f"; not scored: {reasons}" if reasons else "")
        )
    return selection


def argument_files(argument: str, skipped: list[tuple[str, str]]) -> list[Path]:
    """The files one PATH argument contributes; what it holds but does not contribute goes to `skipped`."""
    if not argument.strip():
        raise UnusableArguments("an empty PATH argument (an unset shell variable?): name a file, folder or pattern")
    path = Path(argument).expanduser()
    try:
        if path.is_file():
            return [path]
        if path.is_dir():
            return images_in(path, skipped)
        exists = os.path.lexists(path)
    except OSError as error:  # a name too long for the file system, a folder on the way not readable
        raise UnusableArguments(f"{printable(argument)}: {error.strerror}") from None
    if exists:  # a pipe, a device, a broken link or a link loop: listed, never opened
        skipped.append((printable(path), file_problem(path) or "not a regular file"))
        return []
    if not glob.has_magic(argument):
        raise UnusableArguments(f"{printable(argument)}: no such file or folder")
    matches = pattern_matches(str(path))
    if not matches:
        raise UnusableArguments(f"{printable(argument)}: the pattern matches nothing")
    found = [m for m in matches if m.is_file() and m.suffix.lower() in EXTENSIONS]
    skipped += [(printable(m), skip_reason(m, m.parent)) for m in matches if m.is_file() and m not in found]
    return found + [f for m in matches if m.is_dir() for f in images_in(m, skipped)]
