"""What every stage's output is (`StageOutput`: where it lives, its content fingerprint) and how a stage's
`find_*` reads one back (`read_whole`: on disk and whole, or None)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# what reading an output that is missing, cut short, or edited by hand raises
NOT_WHOLE: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, TypeError)


class StageOutput(ABC):
    """`location`: the file or folder it lives in, under the data dir; `fingerprint`: a digest of its content."""

    @property
    @abstractmethod
    def location(self) -> Path: ...

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...


def read_whole(read: Callable[[], T | None], *errors: type[Exception]) -> T | None:
    """`read()`'s output, or None when it raised one of `NOT_WHOLE` or `errors` (a stage's verification error)."""
    try:
        return read()
    except (*NOT_WHOLE, *errors):
        return None
