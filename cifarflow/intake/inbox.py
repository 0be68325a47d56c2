"""Read an inbox of labeled images: `INBOX/<class name>/<any file>`; the inbox is only ever read.

Every file found is either a candidate (a path and its label) or a rejection with its reason:
nothing is dropped silently, so the summary accounts for every file under the inbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarflow.intake.images import EXTENSIONS
from cifarflow.paths import printable, walk


@dataclass(frozen=True)
class Candidate:
    path: Path
    label: int
    label_name: str


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Inbox:
    root: Path
    candidates: list[Candidate]
    rejected: list[Rejection]

    @property
    def files(self) -> int:
        return len(self.candidates) + len(self.rejected)


def scan_inbox(root: Path, label_names: list[str]) -> Inbox:
    """Candidates in `root/<class>/…` (class names case-insensitive, sub-folders and links to folders
    included), sorted by path so runs are reproducible; files at the top level or under unknown
    classes, broken links, pipes and folders that cannot be read are rejected, each with its reason.
    Paths in rejections are `cifarflow.paths.printable` text (any file name, UTF-8 or not)."""
    classes = {name.lower(): label for label, name in enumerate(label_names)}
    candidates, rejected = [], []
    for found in sorted(walk(root), key=lambda found: str(found.path)):
        path, relative = found.path, found.path.relative_to(root)
        if not relative.parts:  # the inbox itself could not be read (removed since the command started)
            rejected.append(Rejection(printable(path), f"the inbox {found.problem}"))
            continue
        if len(relative.parts) == 1 and found.problem is None:
            rejected.append(Rejection(printable(path), "not in a class folder: put it in INBOX/<class name>/"))
            continue
        folder = relative.parts[0]
        label = classes.get(folder.lower())
        if found.problem is not None:
            rejected.append(Rejection(printable(path), found.problem))
        elif label is None:
            rejected.append(
                Rejection(printable(path), f"folder {folder!r} is not a CIFAR-10 class ({', '.join(label_names)})")
            )
        elif path.suffix.lower() not in EXTENSIONS:
            extension = printable(path.suffix) or "(none)"
            rejected.append(
                Rejection(printable(path), f"extension {extension!r} is not one of {', '.join(sorted(EXTENSIONS))}")
            )
        else:
            candidates.append(Candidate(path, label, label_names[label]))
    return Inbox(root, candidates, rejected)
