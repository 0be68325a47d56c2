"""PATH arguments → the image files to score: files as given, folders recursively, glob patterns."""

from __future__ import annotations

import glob
from pathlib import Path

from cifarflow.errors import PipelineInputError
from cifarflow.intake.images import EXTENSIONS


class UnusableArguments(PipelineInputError):
    """A PATH that names nothing, or a selection with no image files in it."""


def images_in(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, by extension, in path order; hidden files are skipped
    (`.DS_Store`, a sync tool's `.partial` files)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def expand_paths(arguments: list[str], allow_empty: bool = False) -> list[Path]:
    """The files to score, each once, in the order given. A file named directly is scored whatever
    its extension (a bad one gets an error row); folders and patterns contribute image files.
    `allow_empty`: folders with no images are fine (a scheduled run on a folder emptied since)."""
    files: dict[Path, None] = {}
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = images_in(path)
        elif glob.has_magic(argument):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            if not matches:
                raise UnusableArguments(f"{argument}: the pattern matches nothing")
            found = [m for m in matches if m.is_file() and m.suffix.lower() in EXTENSIONS]
            found += [f for m in matches if m.is_dir() for f in images_in(m)]
        else:
            raise UnusableArguments(f"{argument}: no such file or folder")
        files.update(dict.fromkeys(f.absolute() for f in found))
    if not files and not allow_empty:
        raise UnusableArguments(
            f"no image files in {' '.join(arguments) or '(no PATH given)'} (looked for {', '.join(sorted(EXTENSIONS))})"
        )
    return list(files)
