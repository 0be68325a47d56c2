"""A labeled image folder as a data source: `train/<class>/…` + `test/<class>/…`, or `<class>/…` alone (a held-out
test split by content), read in place or from a .tar.gz/.tgz/.tar/.zip of it (members streamed, never extracted);
its exact and cheap identity, and its ingest into Parquet shards, decoded on every core in bounded memory."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import stat
import tarfile
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.data.archive import ARCHIVE_DIR
from cifarflow.data.folder_listing import (
    CLASSES_FILE,
    SPLITS,
    FolderShape,
    Listing,
    archive_listing,
    directory_listing,
    directory_shape,
    folder_listing,
    member_parts,
    members,
    place,
)
from cifarflow.data.shards import rows_table, write_shard
from cifarflow.errors import PipelineInputError
from cifarflow.files import file_digest, remembered_digests
from cifarflow.intake.images import ImageRejected, convert_image, describe
from cifarflow.paths import printable

__all__ = ["FolderShape", "describe_folder", "folder_identity", "ingest_folder", "is_folder_source"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK_FILES = 64  # files a worker decodes per call: fine-grained enough for progress, coarse enough for little IPC
# fewer files decode in this process: a worker starts a fresh Python that imports the command's main module (about
# 1.5 s for the flow's), while one process decodes about 4,000 small images a second
INLINE_FILES = 4096
CHUNK_BYTES = 16 << 20  # an archive's member bytes sent in one call at most (large photos)
SCRATCH = ".pixels.scratch"  # decoded rows in the source's order, read back in row order; removed after
UNREADABLE = "unreadable"  # a file's digest in the identity when it cannot be read
ARCHIVE_LINK = "a link inside the archive, not a file: put the image itself in the archive"


def is_folder_source(path: Path) -> bool:
    """Whether `path` is a folder, or a .tar.gz/.tgz/.tar/.zip that is not the CIFAR-10 python archive (whose first
    member is under `cifar-10-batches-py/`); reads one member at most. An unreadable .tar* is left to the archive
    reader (False), an unreadable .zip is a folder source (its ingest says what is wrong)."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file() or not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return False
    try:
        for name, _kind, _read in members(path):
            if parts := member_parts(path, name):
                return parts[0] != ARCHIVE_DIR
    except PipelineInputError:
        return path.name.lower().endswith(".zip")
    return True


def describe_folder(path: Path) -> FolderShape:
    """The classes and layout of a folder source, from folder names only (an archive: member names only, one
    streamed pass). PipelineInputError (exit 2) naming the path and what to do: no class folders, one class, over 256
    classes, train/ without test/ or the reverse, folders beside train/ and test/, a classes.txt that does not name
    exactly the class folders, an archive member named absolute or with '..', an unreadable archive. Classes found
    only in train/ or only in test/ are no error here (validate reports a class without test images)."""
    path = Path(path)
    return archive_listing(path).shape if path.is_file() else directory_shape(path)


def folder_identity(path: Path, memo: Path, root: Path) -> str:
    """sha256 hex of a folder source's content: `content_digest` over every file below its class folders and its
    classes.txt (a folder), or the archive file's sha256. Content hashes go through the digest memo `memo` (files
    under `root` remembered by relative path; `files.remembered_digests`): a file whose inode, size or mtime changed
    is read again, an unchanged one is not. Opens its own memo block: call it outside any other
    `remembered_digests` block. Raises what `describe_folder` raises."""
    path = Path(path)
    with remembered_digests(memo, root):
        if path.is_file():
            return file_digest(path)
        listing, folder = directory_listing(path), str(path)
        return content_digest(
            path, ((name, _digest_or_unreadable(f"{folder}/{name}")) for name in sorted(listing.files))
        )


def content_digest(path: Path, files: Iterable[tuple[str, str]]) -> str:
    """sha256 hex over lines "name NUL digest" of classes.txt (when `path` has one) and then `files` ((relative
    name, content sha256 hex or 'unreadable') in name order)."""
    digest = hashlib.sha256()
    classes = path / CLASSES_FILE
    lead = [(CLASSES_FILE, _digest_or_unreadable(classes))] if classes.is_file() else []
    for name, file_sha256 in (*lead, *files):
        digest.update(f"{printable(name)}\0{file_sha256}\n".encode())
    return digest.hexdigest()


def _digest_or_unreadable(path: Path | str) -> str:
    try:
        return file_digest(path)
    except OSError:  # a broken link, no permission: ingest lists it as skipped
        return UNREADABLE


def ingest_folder(
    path: Path,
    staging_dir: Path,
    image_size: int,
    test_fraction: float,
    split_seed: int,
    rows_per_shard: int,
    log: Callable[[str], Any] = print,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Decode every file below the class folders of the folder source `path` with `convert_image(·, image_size)` on
    every core, and write `staging_dir/{train,test}/part-NNNNN.parquet` (rows_table/write_shard; rows ordered by
    content sha256, then relative path: the same content gives the same bytes, and classes are mixed). Memory holds
    the file names and one shard's rows, never all images (decoded rows wait in a scratch file in `staging_dir`).
    The split: the given train/ and test/, or within each class the distinct contents ordered by
    sha256(f"{split_seed}:{content sha256}"), the first round(n × test_fraction) to test (at least 1 and at most n-1
    when n ≥ 2; identical files on one side). `progress(done, total)` after each chunk of files decoded.
    Returns the manifest's pieces: {"label_names": [str], "image_size": S, "source": {"kind": "folder", "uri",
    "path", "sha256": `folder_identity`'s value, "files": files found}, "split": {"method": "given"} or {"method":
    "held-out", "test_fraction", "split_seed"}, "skipped": [{"path", "reason"}] by path, "shards": {"train": [entry],
    "test": [entry]}} (`write_shard` entries). Files that do not decode are skipped, never stopping the run;
    PipelineInputError as `describe_folder`, or when an archive changes while read."""
    path, staging_dir = Path(path), Path(staging_dir)
    listing = folder_listing(path)
    shape, total = listing.shape, len(listing.files)
    log(f"decoding {total} files in {len(shape.label_names)} classes ({shape.layout} split) from {path}")
    scratch = staging_dir / SCRATCH
    staging_dir.mkdir(parents=True, exist_ok=True)
    scratch.write_bytes(b"")
    try:
        digests, reasons = _decode_all(path, listing, image_size, scratch, progress)
        labels, rows = _rows(listing, digests, reasons, test_fraction, split_seed)
        shards = {
            split: _write_split(split, rows[split], listing, labels, scratch, image_size, staging_dir, rows_per_shard)
            for split in SPLITS
        }
    finally:
        scratch.unlink(missing_ok=True)
    skipped = [{"path": printable(listing.files[i]), "reason": reason} for i, reason in reasons.items()]
    skipped += [{"path": printable(name), "reason": ARCHIVE_LINK} for name in listing.links]
    skipped.sort(key=lambda entry: entry["path"])
    log(f"wrote {sum(map(len, shards.values()))} shards; skipped {len(skipped)} files that do not decode")
    identity = file_digest(path) if path.is_file() else content_digest(path, _named_digests(listing.files, digests))
    held_out = {"method": "held-out", "test_fraction": test_fraction, "split_seed": split_seed}
    return {
        "label_names": list(shape.label_names),
        "image_size": image_size,
        "source": {"kind": "folder", "uri": str(path), "path": str(path), "sha256": identity}
        | {"files": total + len(listing.links)},
        "split": {"method": "given"} if shape.layout == "given" else held_out,
        "skipped": skipped,
        "shards": shards,
    }


def _named_digests(files: list[str], digests: list[bytes | None]) -> Iterator[tuple[str, str]]:
    for index in sorted(range(len(files)), key=files.__getitem__):
        yield files[index], UNREADABLE if digests[index] is None else digests[index].hex()


# ---- decoding, on every core ---------------------------------------------------------------------------------


def decode_chunk(scratch: str, start: int, side: int, root: str | None, sources: list[str | bytes]) -> list:
    """Decode `sources` (names under the folder `root`, or members' bytes when `root` is None) into rows start, … of
    the file `scratch` ((side, side, 3) uint8 each, zeros for a rejected one); per source (content sha256 as 32
    bytes, None when unreadable; the rejection reason or None). Runs in a worker process."""
    block = np.zeros((len(sources), side, side, 3), np.uint8)
    results = [_decode_one(s if root is None else f"{root}/{s}", side, row) for s, row in zip(sources, block)]
    fd = os.open(scratch, os.O_WRONLY)
    try:
        os.pwrite(fd, block, start * side * side * 3)
    finally:
        os.close(fd)
    return results


def _decode_one(source: str | bytes | Exception, side: int, row: np.ndarray) -> tuple[bytes | None, str | None]:
    if isinstance(source, Exception):  # an archive member that did not read (damaged, encrypted)
        return None, f"could not be read: {describe(source)}"
    try:
        data = source if isinstance(source, bytes) else _read(source)
    except OSError as error:
        return None, f"could not be read: {error.strerror}"
    try:
        row[...] = convert_image(data, side).pixels
    except ImageRejected as rejected:
        return hashlib.sha256(data).digest(), str(rejected)
    return hashlib.sha256(data).digest(), None


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a link to a device or a pipe: never read it
            raise OSError(errno.EINVAL, "not a regular file (a device, pipe or socket)")
        return handle.read()


def _decode_all(
    path: Path, listing: Listing, side: int, scratch: Path, progress: Callable[[int, int], Any] | None
) -> tuple[list[bytes | None], dict[int, str]]:
    """Every file's content digest (None: unreadable) and rejection reasons by file index, the rows in `scratch`."""
    total = len(listing.files)
    digests: list[bytes | None] = [None] * total
    reasons: dict[int, str] = {}
    root = None if path.is_file() else str(path)
    if progress is not None:
        progress(0, total)

    def record(start: int, results: list) -> None:
        for index, (digest, reason) in enumerate(results, start):
            digests[index] = digest
            if reason is not None:
                reasons[index] = reason
        if progress is not None:
            progress(start + len(results), total)  # chunks finish in order

    chunks = _chunks(path, listing)
    if total <= INLINE_FILES:
        for start, sources in chunks:
            record(start, decode_chunk(str(scratch), start, side, root, sources))
        return digests, reasons
    workers = os.cpu_count() or 1
    # spawn: fresh workers, nothing inherited from a parent that runs threads (Prefect's)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        for start, sources in chunks:
            pending.append((start, pool.submit(decode_chunk, str(scratch), start, side, root, sources)))
            if len(pending) >= 2 * workers:  # bounded: an archive's bytes are read no faster than decoded
                start, future = pending.popleft()
                record(start, future.result())
        for start, future in pending:
            record(start, future.result())
    return digests, reasons


def _chunks(path: Path, listing: Listing) -> Iterator[tuple[int, list[str | bytes]]]:
    """(first file index, names or member bytes) in file order: a folder's names, an archive's members streamed."""
    files = listing.files
    if not path.is_file():
        for start in range(0, len(files), CHUNK_FILES):
            yield start, files[start : start + CHUNK_FILES]
        return
    start, batch, size = 0, [], 0
    for name, kind, read in members(path):
        relative = "/".join(member_parts(path, name)).removeprefix(listing.prefix)
        if kind != "file" or start + len(batch) >= len(files) or files[start + len(batch)] != relative:
            continue
        try:
            data = read()
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, RuntimeError, OSError) as error:
            data = error  # that file's problem (a bad CRC, an encrypted member), listed as skipped
        batch.append(data)
        size += len(data) if isinstance(data, bytes) else 0
        if len(batch) == CHUNK_FILES or size >= CHUNK_BYTES:
            yield start, batch
            start, batch, size = start + len(batch), [], 0
    if start + len(batch) != len(files):
        raise PipelineInputError(f"{path} changed while it was read (members differ between two reads); run again")
    if batch:
        yield start, batch


# ---- rows in order, split, shards ----------------------------------------------------------------------------


def _rows(
    listing: Listing, digests: list[bytes | None], reasons: dict[int, str], fraction: float, seed: int
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Each file's label (uint8), and each split's decoded file indices in row order: by content sha256, then
    relative path, so classes are mixed (a first-N subset of the test split is a fair sample) and the order never
    depends on the file system's."""
    shape = listing.shape
    labels = np.zeros(len(listing.files), np.uint8)
    groups: dict[tuple[str | None, int], list[int]] = {}
    for index, name in enumerate(listing.files):
        split, label = place(shape, name)
        labels[index] = label
        if index not in reasons:
            groups.setdefault((split, label), []).append(index)
    rows: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in range(len(shape.label_names)):
        if shape.layout == "given":
            parts = {split: groups.get((split, label), []) for split in SPLITS}
        else:
            parts = _held_out(groups.get((None, label), []), digests, fraction, seed)
        for split, indices in parts.items():
            rows[split].extend(indices)
    return labels, {split: sorted(rows[split], key=lambda i: (digests[i], listing.files[i])) for split in rows}


def _held_out(indices: list[int], digests: list[bytes | None], fraction: float, seed: int) -> dict[str, list[int]]:
    """One class's files split by content: distinct contents ranked by sha256(f"{seed}:{content sha256 hex}"), the
    first round(n × fraction) (1 to n-1 when n ≥ 2) to test; copies of one content share its side."""
    rank = {d: hashlib.sha256(f"{seed}:{d.hex()}".encode()).digest() for d in {digests[i] for i in indices}}
    n = len(rank)
    held = 0 if n < 2 else min(n - 1, max(1, round(n * fraction)))
    test = set(sorted(rank, key=rank.__getitem__)[:held])
    return {"train": [i for i in indices if digests[i] not in test], "test": [i for i in indices if digests[i] in test]}


def _write_split(
    split: str,
    indices: list[int],
    listing: Listing,
    labels: np.ndarray,
    scratch: Path,
    side: int,
    staging_dir: Path,
    rows_per_shard: int,
) -> list[dict[str, Any]]:
    """`split`'s shards from the scratch rows of `indices`, in that order; their manifest entries."""
    out_dir, entries = staging_dir / split, []
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(scratch, "rb") as handle:
        for number, start in enumerate(range(0, len(indices), rows_per_shard)):
            chunk = indices[start : start + rows_per_shard]
            images = np.empty((len(chunk), side, side, 3), np.uint8)
            for row, index in zip(images, chunk):
                os.preadv(handle.fileno(), [row], index * row.nbytes)
            table = rows_table(
                [f"{split}-{start + k:05d}" for k in range(len(chunk))],
                [printable(listing.files[i]) for i in chunk],  # file names that are not UTF-8, escaped
                labels[chunk],
                list(listing.shape.label_names),
                images,
            )
            path = out_dir / f"part-{number:05d}.parquet"
            entries.append(write_shard(table, path, f"{split}/{path.name}"))
    return entries
