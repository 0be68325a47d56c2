"""Obtain and read the official CIFAR-10 python archive (its own 32×32 format, ten classes); an allow-list unpickler
keeps a bad one from running code. The default source when none is named (`default_source`)."""

from __future__ import annotations

import io
import pickle
import socket
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from cifarflow.errors import ArchiveError
from cifarflow.files import file_digest
from cifarflow.layout import DataLayout

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META_FILE = "batches.meta"
_CLASSES, _SIDE = 10, 32  # the format's own: ten classes of 32×32 images, each stored as 3 planes of 32·32 bytes
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # batches.meta
DOWNLOAD_TIMEOUT_SECONDS = 60
# offline machines: CIFAR-10 as class-folder JPEGs (train/<class>/, test/<class>/), a folder source
SHARED_DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
JPEG_COPY = "cifar10-jpeg.tar.gz"


def default_source(data_dir: Path, shared_datasets: Path = SHARED_DATASETS) -> str:
    """The first that exists of `<data_dir>/cache/cifar-10-python.tar.gz`, the JPEG copy, the official URL."""
    local, jpeg_copy = DataLayout(Path(data_dir)).local_archive, Path(shared_datasets) / JPEG_COPY
    return str(local) if local.is_file() else str(jpeg_copy) if jpeg_copy.is_file() else OFFICIAL_URL


def is_cifar10(label_names: list[str] | tuple[str, ...], image_size: int) -> bool:
    """Whether a data set is CIFAR-10 as published: its ten classes in label order at 32×32 px (the official archive,
    or the shared JPEG copy read as a folder). The presets' promotion floors and published accuracies hold there."""
    return tuple(label_names) == LABEL_NAMES and image_size == 32


class DownloadFailed(OSError):
    """The archive could not be downloaded: retried, unlike an ArchiveError."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) uint8, indices into the label names
    filenames: list[str]


def is_url(source: str) -> bool:
    return urlparse(str(source)).scheme in {"http", "https", "file"}


def is_remote(source: str) -> bool:
    """A URL to download (http, https), not a local path or file:// URL."""
    return is_url(source) and not str(source).startswith("file:")


def local_path(source: str) -> Path:
    parsed = urlparse(str(source))
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(source)


def verify_checksums(path: Path, sha256: str | None = None, md5: str | None = None) -> str:
    """The archive's sha256; ArchiveError when it differs from `sha256` or its md5 from `md5`."""
    actual = {"sha256": file_digest(path, "sha256"), "md5": file_digest(path, "md5") if md5 else None}
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and actual[algorithm] != expected.lower():
            raise ArchiveError(
                f"{path}: {algorithm} is {actual[algorithm]}, expected {expected}. The file is corrupt or not "
                f"the archive you meant; download or rebuild it, or pass the right --{algorithm}."
            )
    return actual["sha256"]


def fetch_archive(source: str, raw_dir: Path, sha256: str | None = None, md5: str | None = None) -> tuple[Path, str]:
    """A verified local copy of the archive and its sha256 (the official URL checked against its published md5)."""
    parsed = urlparse(str(source))
    if parsed.scheme in {"http", "https"}:
        if source == OFFICIAL_URL and not (sha256 or md5):
            md5 = OFFICIAL_MD5
        path = _download(source, raw_dir, sha256=sha256, md5=md5)
    else:
        path = local_path(source)
        if not path.is_file():
            raise ArchiveError(
                f"CIFAR-10 archive not found at {path}. Pass --source with the path or URL of "
                "cifar-10-python.tar.gz (see docs/how-to/get-data.md)."
            )
    return path, verify_checksums(path, sha256=sha256, md5=md5)


def _download(url: str, raw_dir: Path, sha256: str | None, md5: str | None) -> Path:
    import keras  # heavy import kept local: only downloads need it

    raw_dir.mkdir(parents=True, exist_ok=True)
    file_hash, algorithm = (sha256, "sha256") if sha256 else (md5, "md5") if md5 else (None, "auto")
    name = Path(urlparse(url).path).name or "cifar-10-python.tar.gz"
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # urllib has no per-call timeout in get_file
    try:
        path = keras.utils.get_file(
            name, url, file_hash=file_hash, hash_algorithm=algorithm, cache_dir=str(raw_dir), cache_subdir="."
        )
    except ValueError as error:  # get_file's word for a hash mismatch after download
        raise ArchiveError(f"download of {url} failed verification: {error}") from error
    except Exception as error:  # get_file wraps every network failure in a bare Exception
        places = (DataLayout(raw_dir.parent).local_archive, SHARED_DATASETS / JPEG_COPY)
        tried = ", ".join(f"{place} ({'present' if place.is_file() else 'absent'})" for place in places)
        raise DownloadFailed(
            f"could not download {url} ({' '.join(str(error).split())}); the default source looks first at {tried}. "
            f"Without internet, put cifar-10-python.tar.gz at {places[0]}, or pass --source"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return Path(path)


class _BatchUnpickler(pickle.Unpickler):
    """Allows only numpy arrays and dtypes: all the official batches contain."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise ArchiveError(f"archive batch references {module}.{name}; refusing to unpickle it")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; skip the deprecation shim
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _unpickle(data: bytes, member: str) -> dict[bytes, object]:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ArchiveError:
        raise
    except Exception as error:
        raise ArchiveError(f"{member} is not a valid CIFAR-10 batch pickle: {error}") from error
    if not isinstance(obj, dict):
        raise ArchiveError(f"{member} holds {type(obj).__name__}, expected a dict")
    return obj


def _batch_to_split(batch: dict[bytes, object], member: str) -> Split:
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
        filenames = [f.decode() if isinstance(f, bytes) else str(f) for f in batch[b"filenames"]]
    except KeyError as error:
        raise ArchiveError(f"{member} lacks the key {error.args[0]!r}") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise ArchiveError(
            f"{member}: data has shape {data.shape} {data.dtype}, expected (N, {3 * _SIDE * _SIDE}) uint8"
        )
    if labels.shape != (data.shape[0],) or len(filenames) != data.shape[0]:
        raise ArchiveError(
            f"{member}: {data.shape[0]} images but {labels.shape[0]} labels and {len(filenames)} file names"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _CLASSES):
        raise ArchiveError(f"{member}: labels span {labels.min()}..{labels.max()}, expected 0..{_CLASSES - 1}")
    # The archive stores each image as 1024 red, then green, then blue bytes (CHW); keep HWC.
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels.astype(np.uint8), filenames)


def read_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The archive's `cifar-10-batches-py/<name>` files by name; ArchiveError when unreadable or one is missing."""
    wanted = {f"{ARCHIVE_DIR}/{name}" for name in names}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    blobs[member.name.rsplit("/", 1)[1]] = tar.extractfile(member).read()
                if len(blobs) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ArchiveError(
            f"{path} is not a readable tar.gz archive ({error}). It may be truncated or not the "
            "CIFAR-10 python archive; download or rebuild it."
        ) from error
    missing = sorted(name for name in wanted if name.rsplit("/", 1)[1] not in blobs)
    if missing:
        raise ArchiveError(f"{path} is missing {', '.join(missing)}; it is not a complete CIFAR-10 python archive")
    return blobs


def label_names_of(meta_blob: bytes) -> list[str]:
    """The class names `batches.meta` lists, in label order; ArchiveError unless there are ten."""
    meta = _unpickle(meta_blob, META_FILE)
    label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if len(label_names) != _CLASSES:
        raise ArchiveError(f"{META_FILE} lists {len(label_names)} label names, expected {_CLASSES}")
    return label_names


def read_label_names(path: Path) -> list[str]:
    """The archive's class names, reading only as far as `batches.meta` (no image decoded)."""
    return label_names_of(read_members(path, (META_FILE,))[META_FILE])


def read_archive(path: Path) -> tuple[dict[str, Split], list[str]]:
    """{"train": Split, "test": Split} of (N, 32, 32, 3) images and the ten label names; ArchiveError naming what is
    wrong."""
    blobs = read_members(path, (*TRAIN_BATCHES, *TEST_BATCHES, META_FILE))
    label_names = label_names_of(blobs[META_FILE])
    splits = {}
    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
        parts = [_batch_to_split(_unpickle(blobs.pop(n), n), n) for n in names]
        splits[split] = Split(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            filenames=[f for p in parts for f in p.filenames],
        )
    return splits, label_names
