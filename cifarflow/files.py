"""Content hashes and atomic writes: an output is written under a temporary name beside it and renamed into
place, so a crash, a full disk or a kill never leaves a half-written file where a reader expects a whole one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20  # hashlib.file_digest's 256 KiB buffer hashes about 9 % slower
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (inside `remembered_digests`: a remembered sha256)."""
    memo = _REMEMBERED.get()
    if memo is not None and algorithm == "sha256":
        return _remembered_digest(os.fspath(path), *memo)
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


# inside `remembered_digests`: (what its memo file held, what this block hashed or confirmed, the root)
_REMEMBERED: ContextVar[tuple[dict, dict, Path] | None] = ContextVar("remembered_digests", default=None)


@contextlib.contextmanager
def remembered_digests(memo: Path, root: Path) -> Iterator[None]:
    """Inside, `file_digest` hashes a file again only when its (inode, size, mtime ns, ctime ns), what git's index
    trusts, differs from `memo`'s; a file under `root` is remembered by its relative path (a moved root keeps its
    memo)."""
    try:
        known = read_json(memo) if memo.is_file() else {}
    except (OSError, ValueError):  # a memo cut short or edited: hash again
        known = {}
    known, used = known if isinstance(known, dict) else {}, {}
    token = _REMEMBERED.set((known, used, root))
    try:
        yield
    finally:
        _REMEMBERED.reset(token)
        kept = {name: entry for name, entry in known.items() if os.path.exists(os.path.join(root, name))} | used
        if kept != known:
            with contextlib.suppress(OSError):  # a read-only data dir: hash again next time
                write_json(memo, kept)


def _remembered_digest(path: str, known: dict, used: dict, root: Path) -> str:
    stat = os.stat(path)  # str and os.path, not pathlib: a folder source's identity stats every file
    identity = [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]  # ctime: no tool can set it back
    name = path.removeprefix(os.path.join(root, ""))  # relative to root when inside it
    entry = known.get(name)
    if not (isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("sha256"), str)):
        token = _REMEMBERED.set(None)
        try:
            entry = {"identity": identity, "sha256": file_digest(path)}
        finally:
            _REMEMBERED.reset(token)
    used[name] = entry
    return entry["sha256"]


def text_digest(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable parts (sorted keys), used for cache keys."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def storage_errors(where: Path) -> Iterator[None]:
    """'Disk full', 'read-only' and 'permission denied' under `where` as a StorageError saying what to do."""
    from cifarflow.errors import StorageError

    try:
        yield
    except OSError as error:
        if error.errno not in STORAGE_ERRNOS:
            raise
        reason = "the disk is full" if error.errno in {errno.ENOSPC, errno.EDQUOT} else "it is not writable"
        raise StorageError(
            f"cannot write under {where}: {reason} ({error.strerror}). Free space or fix permissions, or pass "
            "another --data-dir; nothing half-written was left behind."
        ) from error


def ensure_writable(directory: Path) -> None:
    """Fail fast, before any work, if `directory` cannot be created or written."""
    with storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` whole when the block succeeds; a failure
    (StorageError for a full disk) leaves the old one."""
    target = Path(target)
    with storage_errors(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.part"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        with storage_errors(target.parent):
            yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def point_symlink(link: str | Path, target: str | Path) -> None:
    """Atomically make `link` a relative symlink to `target` (replacing any old link)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def file_signature(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, bytes, mtime in ns), which changes when a file is replaced or rewritten; None when gone."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def field_problem(data: Any, fields: dict[str, tuple[type, ...]], required: tuple[str, ...]) -> str | None:
    """Why `data` is not a record of `fields` (a missing required field, a wrong type), or None."""
    if not isinstance(data, dict):
        return f"not a JSON object but {_kind(data)}"
    for name in required:
        if name not in data:
            return f"no `{name}` field"
    for name, types in fields.items():
        if name in data and (not isinstance(data[name], types) or isinstance(data[name], bool)):
            words = ("null" if t is type(None) else _TYPE_WORDS.get(t, t.__name__) for t in types)
            wanted = " or ".join(dict.fromkeys(words))
            return f"`{name}` is {_kind(data[name])}, not {wanted}"
    return None


_TYPE_WORDS = {str: "text", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return _TYPE_WORDS.get(type(value), type(value).__name__)
