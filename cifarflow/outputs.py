"""What every stage's output is, for the runner and every stage that reads one (types only).

Each stage's output type derives from `StageOutput`: where it lives and its content fingerprint,
from which downstream cache keys are built. Each stage's `find_*` reads its output back through
`read_whole`, which tells "on disk and whole" from anything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# what reading an output that is missing, cut short, or edited by hand raises
NOT_WHOLE: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, TypeError)


class StageOutput(ABC):
    """A stage's output: `location` (the file or folder it lives in, under the data dir) and
    `fingerprint` (a digest of its content: equal fingerprints, equal outputs)."""

    @property
    @abstractmethod
    def location(self) -> Path: ...

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...


def read_whole(read: Callable[[], T | None], *errors: type[Exception]) -> T | None:
    """`read()`'s output, or None when it is not on disk whole: `read` raised one of `NOT_WHOLE` or
    `errors` (a stage's own verification error), or returned None itself."""
    try:
        return read()
    except (*NOT_WHOLE, *errors):
        return None
