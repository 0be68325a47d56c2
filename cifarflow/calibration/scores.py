"""Calibration scores (ECE, NLL, Brier) and reliability bins of (N, classes) probabilities and (N,) labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BINS = 15  # equal-width confidence bins, as in Guo et al. (2017), "On Calibration of Modern Neural Networks"
# the smallest probability a log is taken of, here, in temperature scaling and in the export's float32 graph
TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: edges (bins + 1,), image count, mean confidence and accuracy (NaN: empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> ReliabilityBins:
    """The top probability in `bins` equal-width, right-closed bins over [0, 1] (0 falls in the first)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).astype(np.int64)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(probabilities) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_confidence, accuracy)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """The count-weighted mean over bins of |accuracy − mean confidence| (Naeini et al., 2015), 0..1."""
    binned = reliability_bins(probabilities, labels, bins)
    filled = binned.counts > 0
    if not filled.any():
        return 0.0
    gaps = np.abs(binned.accuracy[filled] - binned.confidence[filled])
    return float(np.sum(binned.counts[filled] * gaps) / binned.counts.sum())


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean −log p(true class), in nats (the cross-entropy loss); probabilities below TINY count as TINY."""
    if len(labels) == 0:
        return 0.0
    true = np.asarray(probabilities, np.float64)[np.arange(len(labels)), np.asarray(labels).astype(np.int64)]
    return float(-np.mean(np.log(np.maximum(true, TINY))))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score (Brier, 1950): mean over images of Σ_k (p_k − 1[k = label])², in 0..2."""
    if len(labels) == 0:
        return 0.0
    probabilities = np.asarray(probabilities, np.float64)
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(len(labels)), np.asarray(labels).astype(np.int64)] = 1.0
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class CalibrationScores:
    ece: float  # expected calibration error, 15 bins, 0..1
    nll: float  # negative log-likelihood, nats per image
    brier: float  # multi-class Brier score, 0..2
    mean_confidence: float  # mean top probability, 0..1
    accuracy: float  # share of top classes that are right, 0..1

    def to_json(self) -> dict[str, float]:
        return {name: round(value, 6) for name, value in asdict(self).items()}


def calibration_scores(probabilities: np.ndarray, labels: np.ndarray) -> CalibrationScores:
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    confidence = float(probabilities.max(axis=1).mean()) if len(labels) else 0.0
    accuracy = float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else 0.0
    ece = expected_calibration_error(probabilities, labels)
    nll, brier = negative_log_likelihood(probabilities, labels), brier_score(probabilities, labels)
    return CalibrationScores(ece, nll, brier, confidence, accuracy)
