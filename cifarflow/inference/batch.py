"""Batch prediction: image files → one Parquet row each (`SCHEMA`), decoded on threads one batch ahead of
the model, each batch written as a row group once scored; a file that cannot be decoded gets a row with its
`error`. Scored images get a `prediction_id` and go to the prediction log when one is given."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cifarflow.files import atomic_path
from cifarflow.inference.predictor import Predictor
from cifarflow.inference.sheet import SHEET_IMAGES, contact_sheet
from cifarflow.intake.images import ImageRejected, convert_image
from cifarflow.monitoring.log import PredictionLog, new_ids
from cifarflow.paths import printable

BATCH_SIZE = 256
DECODE_THREADS = 2  # Pillow releases the GIL while decoding
ERRORS_KEPT = 100  # failures listed in the summary and the UI; the Parquet file has every one

# --8<-- [start:schema]
TOP = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),  # the predicted class; null when the file could not be scored
        ("probability", pa.float32()),
        ("top", TOP),  # the 3 most probable classes, most probable first
        ("model_version", pa.string()),
        ("error", pa.string()),  # null, or why this file could not be scored
        ("note", pa.string()),  # null, or how it was decoded differently from the file's wish (unreadable EXIF)
        ("prediction_id", pa.string()),  # the row in the prediction log; null when the file could not be scored
    ]
)
# --8<-- [end:schema]


@dataclass
class BatchResult:
    out: Path
    sheet: Path | None
    files: int
    scored: int
    failed: int
    label_counts: dict[str, int]
    seconds: float
    model_version: str
    errors: list[dict[str, str]] = field(default_factory=list)  # the first failures, for the summary


def decode(path: Path, side: int) -> tuple[np.ndarray | None, str | None, str | None]:
    try:
        converted = convert_image(path, side)
    except ImageRejected as rejected:
        return None, str(rejected), None
    return converted.pixels, None, "; ".join(converted.notes) or None


def decoded_batches(
    files: list[Path], batch_size: int, pool: ThreadPoolExecutor, side: int
) -> Iterator[tuple[list, list]]:
    """(paths, decoded) per batch; the next batch is already decoding while the caller scores this one."""
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    pending = pool.map(decode, chunks[0], repeat(side)) if chunks else None
    for number, chunk in enumerate(chunks):
        decoded = list(pending)
        pending = pool.map(decode, chunks[number + 1], repeat(side)) if number + 1 < len(chunks) else None
        yield chunk, decoded


def score_batch(
    paths: list[Path], decoded: list, predictor: Predictor, prediction_log: PredictionLog | None = None
) -> tuple[list[dict], np.ndarray]:
    """Rows for one batch and the pixels of the files that decoded; the scored images go to `prediction_log`."""
    good = [i for i, (pixels, _, _) in enumerate(decoded) if pixels is not None]
    side = predictor.image_size
    pixels = np.stack([decoded[i][0] for i in good]) if good else np.zeros((0, side, side, 3), np.uint8)
    probabilities = predictor.probabilities(pixels) if good else np.zeros((0, len(predictor.label_names)), np.float32)
    ids = new_ids(len(good))
    if prediction_log is not None:
        prediction_log.append(ids, "batch", predictor.version, probabilities, pixels)
    top_of = dict(zip(good, zip(predictor.top(probabilities), ids)))
    rows = []
    for i, path in enumerate(paths):
        top, prediction_id = top_of.get(i, (None, None))
        best = top[0] if top else {"label": None, "probability": None}
        error = None if top else decoded[i][1]
        values = (printable(path), best["label"], best["probability"], top, predictor.version, error, decoded[i][2])
        rows.append(dict(zip(SCHEMA.names, (*values, prediction_id), strict=True)))
    return rows, pixels


def predict_files(
    files: list[Path],
    predictor: Predictor,
    out: Path,
    sheet: Path | None = None,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int, int, int], None] | None = None,
    prediction_log: PredictionLog | None = None,
) -> BatchResult:
    """Score `files` into the Parquet file `out` (atomically) and the contact sheet `sheet`, logging to
    `prediction_log`; `on_progress(done, total, failed)` after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    shown: list[tuple[np.ndarray, dict]] = []  # the first SHEET_IMAGES scored images, for the sheet
    errors: list[dict[str, str]] = []
    done = failed = 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, ThreadPoolExecutor(DECODE_THREADS) as pool:
        with open(tmp, "wb") as sink, pq.ParquetWriter(sink, SCHEMA) as writer:  # a handle: pyarrow wants UTF-8 paths
            for paths, decoded in decoded_batches(files, batch_size, pool, predictor.image_size):
                rows, pixels = score_batch(paths, decoded, predictor, prediction_log)
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                scored_rows = [row for row in rows if row["error"] is None]
                counts.update(row["label"] for row in scored_rows)
                shown += list(zip(pixels, scored_rows))[: SHEET_IMAGES - len(shown)]
                failures = [{"path": row["path"], "error": row["error"]} for row in rows if row["error"]]
                errors.extend(failures[: max(0, ERRORS_KEPT - len(errors))])
                done, failed = done + len(rows), failed + len(failures)
                if on_progress:
                    on_progress(done, len(files), failed)
    if sheet is not None and shown:
        contact_sheet([image for image, _ in shown], [row for _, row in shown], sheet)
    return BatchResult(
        out=Path(out),
        sheet=sheet if sheet is not None and shown else None,
        files=len(files),
        scored=done - failed,
        failed=failed,
        label_counts=dict(counts.most_common()),
        seconds=time.perf_counter() - started,
        model_version=predictor.version,
        errors=errors,
    )
