"""The review queue: logged predictions with no answer yet, least confident first.

Which measure. Three standard uncertainty-sampling scores (Settles, "Active Learning Literature
Survey", 2009, §3.1), each computed from one row of class probabilities p (sorted p₁ ≥ p₂ ≥ …):

    margin   p₁ − p₂          small: the model hesitates between two classes (the default)
    top      p₁               small: "least confidence"
    entropy  −Σ pᵢ log pᵢ     large: the mass is spread over many classes

The queue orders by margin. On 10 classes a person answers one question, "which of these two?", and
margin ranks exactly the images where that question is open; it ignores how the leftover mass is
spread over classes nobody would pick, which entropy weighs. `benchmarks/bench_feedback.py` measures
all three on the served test set (the error rate among the least confident against random logged
images): see the README for the numbers.

`LogIndex` keeps, per prediction-log file, the ids, times, versions and probabilities (never the
pixels) and reads only files it has not seen or that were replaced (a day merged again); a file that
disappears (retention, compaction) is dropped from the index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cifarflow.files import file_signature
from cifarflow.monitoring.log import log_files, read_table

log = logging.getLogger(__name__)

MEASURES = ("margin", "top", "entropy")
DEFAULT_MEASURE = "margin"
ORDERS = ("least-confident", "random")  # random: by prediction id, a UUID4, so stable between looks
DEFAULT_ORDER = "least-confident"  # kept because it paid at least as much as random: benchmarks/bench_feedback.py
INDEX_COLUMNS = ["prediction_id", "time", "model_version", "probabilities"]


def uncertainty(probabilities: np.ndarray, measure: str = DEFAULT_MEASURE) -> np.ndarray:
    """(N, K) class probabilities → (N,) float64 uncertainty, higher = less confident: 1 − margin,
    1 − top probability, or entropy in nats. ValueError for a measure not in MEASURES or a shape not 2-D."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K ≥ 2), got shape {p.shape}")
    if measure == "margin":
        top_two = -np.partition(-p, 1, axis=1)[:, :2]
        return 1.0 - (top_two[:, 0] - top_two[:, 1])
    if measure == "top":
        return 1.0 - p.max(axis=1)
    if measure == "entropy":
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    raise ValueError(f"unknown uncertainty measure {measure!r}: one of {', '.join(MEASURES)}")


def least_confident_first(probabilities: np.ndarray, measure: str = DEFAULT_MEASURE) -> np.ndarray:
    """(N,) int64 row indices, least confident first; ties keep log order (a stable sort)."""
    return np.argsort(-uncertainty(probabilities, measure), kind="stable")


def margins(probabilities: np.ndarray) -> np.ndarray:
    """(N,) p₁ − p₂, in [0, 1]."""
    return 1.0 - uncertainty(probabilities, "margin")


@dataclass(frozen=True)
class Logged:
    """One logged prediction as the review sees it."""

    prediction_id: str
    time: str  # ISO 8601, UTC
    model_version: str
    probabilities: np.ndarray  # (K,) float32


@dataclass
class _FileRows:
    ids: np.ndarray  # (n,) str
    times: np.ndarray  # (n,) datetime64[us]
    versions: np.ndarray  # (n,) str
    probabilities: np.ndarray  # (n, K) float32


class LogIndex:
    """What the prediction log under `root` holds, without the pixels, refreshed on each use.

    Memory: about 100 bytes per logged prediction (a million predictions: ~100 MB). Thread-safe."""

    def __init__(self, root: Path, warn: Callable = log.warning):
        self.root, self.warn = Path(root), warn
        self._files: dict[Path, dict[int, _FileRows]] = {}  # path → classes → rows
        self._seen: dict[Path, tuple[int, int, int, int]] = {}  # path → the `file_signature` that was read
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the files written or replaced since the last refresh (a day merged again rewrites its
        `day.parquet` in place: a new inode); forget those removed."""
        with self._lock:
            present = {path: file_signature(path) for path in log_files(self.root)}
            for gone in set(self._files) - set(present):
                del self._files[gone]
                del self._seen[gone]
            for path, seen in present.items():
                if seen is not None and self._seen.get(path) != seen:
                    self._files[path], self._seen[path] = self._read(path), seen

    def _read(self, path: Path) -> dict[int, _FileRows]:
        """The file's rows by number of classes (a merged day can hold two label sets); {} for a file
        that cannot be read, named in a warning (read again once it changes)."""
        try:
            table = read_table([path], columns=INDEX_COLUMNS, warn=self.warn)
        except (OSError, pa.ArrowException) as error:
            self.warn(f"prediction log: {path} left out of the review queue: {error}")
            return {}
        widths = pc.list_value_length(table["probabilities"]).to_numpy(zero_copy_only=False)
        groups = {}
        for width in np.unique(widths):
            rows = table.filter(pa.array(widths == width))
            flat = rows["probabilities"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            groups[int(width)] = _FileRows(
                ids=np.asarray(rows["prediction_id"].to_numpy(zero_copy_only=False), str),
                times=rows["time"].to_numpy(zero_copy_only=False).astype("datetime64[us]"),
                versions=np.asarray(rows["model_version"].to_numpy(zero_copy_only=False), str),
                probabilities=flat.reshape(rows.num_rows, int(width)).astype(np.float32),
            )
        return groups

    def find(self, prediction_id: str) -> tuple[Path, Logged] | None:
        """The log file holding `prediction_id` and its row, or None (no refresh: call `refresh` first)."""
        with self._lock:
            for path, groups in self._files.items():
                for rows in groups.values():
                    hits = np.flatnonzero(rows.ids == prediction_id)
                    if len(hits):
                        return path, _logged(rows, hits[0])
        return None

    def rows(self, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every indexed prediction over `classes` classes (the serving model's label set) once, in time
        order: ids (N,) str, times (N,) datetime64[us], versions (N,) str, probabilities (N, classes) float32."""
        with self._lock:
            parts = [groups[classes] for groups in self._files.values() if classes in groups]
        if not parts:
            empty = np.zeros((0, classes), np.float32)
            return np.zeros(0, str), np.zeros(0, "datetime64[us]"), np.zeros(0, str), empty
        ids = np.concatenate([p.ids for p in parts])
        times = np.concatenate([p.times for p in parts])
        order = np.argsort(times, kind="stable")
        _, first = np.unique(ids[order], return_index=True)  # each prediction once (a cut-short compaction)
        keep = order[np.sort(first)]
        return (
            ids[keep],
            times[keep],
            np.concatenate([p.versions for p in parts])[keep],
            np.concatenate([p.probabilities for p in parts])[keep],
        )


def _logged(rows: _FileRows, i: int) -> Logged:
    when = np.datetime_as_string(rows.times[i], unit="s") + "Z"
    return Logged(str(rows.ids[i]), when, str(rows.versions[i]), rows.probabilities[i])


def held_row(table: pa.Table) -> Logged:
    """The first row of `table` (the log's SCHEMA) as the review sees it: a row the service's writer still
    holds (`PredictionLog.held`), not on disk yet."""
    rows = table.slice(0, 1)
    return Logged(
        rows["prediction_id"][0].as_py(),
        np.datetime_as_string(rows["time"].to_numpy().astype("datetime64[s]")[0]) + "Z",
        rows["model_version"][0].as_py(),
        np.asarray(rows["probabilities"][0].as_py(), np.float32),
    )


def read_pixels(
    files: list[Path] | pa.Table, prediction_ids: Iterable[str], warn: Callable = log.warning
) -> dict[str, np.ndarray]:
    """prediction_id → (32, 32, 3) uint8 pixels, for those of `prediction_ids` the log `files` hold (or the
    rows of a table of the log's SCHEMA: a writer's held rows)."""
    wanted = pa.array(sorted(set(prediction_ids)), pa.string())
    if isinstance(files, pa.Table):
        table = files.filter(pc.is_in(files["prediction_id"], wanted))
    else:
        table = read_table(files, ds.field("prediction_id").isin(wanted), ["prediction_id", "pixels"], warn)
    found = {}
    for id_, raw in zip(table["prediction_id"].to_pylist(), table["pixels"].to_pylist()):
        found.setdefault(id_, np.frombuffer(raw, np.uint8).reshape(32, 32, 3))
    return found


def queue_order(
    ids: np.ndarray,
    probabilities: np.ndarray,
    answered: set[str],
    label_names: list[str],
    label: str | None = None,
    measure: str = DEFAULT_MEASURE,
    order: str = DEFAULT_ORDER,
) -> np.ndarray:
    """Row indices of the unanswered predictions (optionally: predicted as `label`), least confident
    first, or (`order="random"`) in the order of their random ids. ValueError for a `label` not in
    `label_names` or an unknown order."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: one of {', '.join(ORDERS)}")
    if not len(ids):
        return np.zeros(0, np.int64)
    keep = ~np.isin(ids, np.asarray(sorted(answered), str)) if answered else np.ones(len(ids), bool)
    if label is not None:
        if label not in label_names:
            raise ValueError(f"{label!r} is not a class: one of {', '.join(label_names)}")
        keep &= probabilities.argmax(axis=1) == label_names.index(label)
    candidates = np.flatnonzero(keep)
    if order == "random":
        return candidates[np.argsort(ids[candidates], kind="stable")]
    return candidates[least_confident_first(probabilities[candidates], measure)]
