"""The review queue: logged predictions with no answer yet, least confident first, by one SQL query. Scores from
uncertainty sampling (Settles, "Active Learning Literature Survey", 2009, §3.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarflow.monitoring.log import ROW, Logged, logged, reading

MEASURES = ("margin", "top", "entropy")
DEFAULT_MEASURE = "margin"
ORDERS = ("least-confident", "random")  # random: by prediction id, a UUID4, so stable between looks
DEFAULT_ORDER = "least-confident"
ORDER_BY = {"least-confident": "uncertainty DESC, seq", "random": "prediction_id"}


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


def margins(probabilities: np.ndarray) -> np.ndarray:
    """(N,) p₁ − p₂, in [0, 1]."""
    return 1.0 - uncertainty(probabilities, "margin")


def unanswered(
    path: Path, classes: int, n: int, label: int | None = None, order: str = DEFAULT_ORDER
) -> tuple[int, list[Logged]]:
    """(how many, the first `n`) of the unanswered predictions over `classes` classes (predicted as `label` when
    given), in `order`; ValueError for an unknown order."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: one of {', '.join(ORDERS)}")
    where = (
        "FROM predictions p WHERE classes = ? AND (? IS NULL OR label = ?) "
        "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.prediction_id = p.prediction_id)"
    )
    with reading(path) as db:
        (count,) = db.execute(f"SELECT COUNT(*) {where}", (classes, label, label)).fetchone()
        query = f"SELECT {ROW}, probabilities, NULL {where} ORDER BY {ORDER_BY[order]} LIMIT ?"
        rows = db.execute(query, (classes, label, label, n)).fetchall()
    return count, [logged(*row) for row in rows]
