"""Read an inbox of labeled images: `INBOX/<class name>/<any file>`; the inbox is only ever read.

Every file found is either a candidate (a path and its label) or a rejection with its reason:
nothing is dropped silently, so the summary accounts for every file under the inbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifarflow.intake.images import EXTENSIONS


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
    """Candidates in `root/<class>/…` (class names case-insensitive, sub-folders included), sorted
    by path so runs are reproducible; files at the top level or under unknown classes are rejected."""
    classes = {name.lower(): label for label, name in enumerate(label_names)}
    candidates, rejected = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            rejected.append(Rejection(str(path), "not in a class folder: put it in INBOX/<class name>/"))
            continue
        folder = relative.parts[0]
        label = classes.get(folder.lower())
        if label is None:
            rejected.append(
                Rejection(str(path), f"folder {folder!r} is not a CIFAR-10 class ({', '.join(label_names)})")
            )
        elif not path.is_file():
            rejected.append(Rejection(str(path), "broken symbolic link"))
        elif path.suffix.lower() not in EXTENSIONS:
            rejected.append(
                Rejection(
                    str(path), f"extension {path.suffix or '(none)'!r} is not one of {', '.join(sorted(EXTENSIONS))}"
                )
            )
        else:
            candidates.append(Candidate(path, label, label_names[label]))
    return Inbox(root, candidates, rejected)
