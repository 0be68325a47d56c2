"""One run at a time: an exclusive advisory lock (flock) on a file, held for the whole run."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_LOCK_TIMEOUT_S = 1800.0  # how long a run waits for another run on the same data directory


class DataDirLocked(RuntimeError):
    """Another pipeline run holds the data directory."""


@contextlib.contextmanager
def data_dir_lock(
    lock_file: Path,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    log=print,
    poll_s: float = 1.0,
    holder_kind: str = "pipeline run",
) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`, waiting up to `timeout_s` (saying so once through `log`);
    DataDirLocked after that. The kernel drops the lock when its holder dies: a killed run blocks nobody."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        for attempt in itertools.count():
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
            if time.monotonic() >= deadline:
                raise DataDirLocked(
                    f"{lock_file.parent} is in use by another {holder_kind} ({holder}); waited {timeout_s:.0f} s. "
                    "Wait for it to finish, or use another --data-dir."
                )
            if attempt == 0:
                log(f"waiting for the {holder_kind} holding {lock_file} ({holder})")
            time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
