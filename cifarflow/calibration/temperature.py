"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks", §4.2): one
positive number T divides the logits before the softmax, fitted by minimising the negative
log-likelihood on images the model did not train on. It does not change any image's top class, so
accuracy is untouched; T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones.

The models here give probabilities (a softmax head, or the softmax of TTA-averaged logits), and
log p equals the logits up to a per-image constant that the softmax ignores, so scaling applies to
probabilities directly: p_T = softmax(log p / T). The export traces the same arithmetic in float32
(`cifarflow.registry.export`), so the exported model, the service and batch prediction return p_T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cifarflow.calibration.scores import TINY

BOUNDS = (0.05, 20.0)  # the temperatures searched; a fit at a bound means the data could not pin T down


@dataclass(frozen=True)
class TemperatureFit:
    """What the search found: the NLL-minimising T in BOUNDS, and whether the data pin it down there."""

    temperature: float  # the minimiser in BOUNDS; a bound itself when `interior` is False
    interior: bool  # the NLL falls toward T from both ends of BOUNDS: a true minimum, not the search's edge
    images: int
    errors: int  # images whose top class is not their label: only these push T up (see `nll_slope`)


def apply_temperature(probabilities: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """(N, classes) probabilities → softmax(log p / T), float64, rows summing to 1. `temperature` is
    one T or (N,) one per row; ValueError for a T that is not positive."""
    temperature = np.asarray(temperature, np.float64)
    if not np.all(temperature > 0):
        raise ValueError(f"a temperature must be positive, got {temperature}")
    divisor = temperature[:, None] if temperature.ndim == 1 else temperature
    scaled = np.log(np.maximum(np.asarray(probabilities, np.float64), TINY)) / divisor
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll_slope(log_p: np.ndarray, labels: np.ndarray, inverse: float) -> float:
    """d NLL / d(1/T) at 1/T = `inverse`, for (N, classes) log-probabilities: the mean over images of
    Σ_k q_k (log p_k − log p_label), q = softmax(log p / T). The NLL is convex in 1/T; an image whose
    top class is right adds ≤ 0 at every T, so with no error the NLL falls all the way to T → 0."""
    scaled = log_p * inverse
    scaled -= scaled.max(axis=1, keepdims=True)
    q = np.exp(scaled)
    q /= q.sum(axis=1, keepdims=True)
    gaps = log_p - log_p[np.arange(len(labels)), labels][:, None]
    return float(np.mean(np.sum(q * gaps, axis=1)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The T in BOUNDS minimising the NLL of softmax(log p / T) on these images: the root of
    `nll_slope` in 1/T (scipy's brentq) where the slope changes sign inside BOUNDS (`interior`);
    otherwise the bound the NLL keeps falling toward. T = 1.0, not interior, for no images."""
    from scipy.optimize import brentq

    labels = np.asarray(labels).astype(np.int64)
    if len(labels) == 0:
        return TemperatureFit(1.0, False, 0, 0)
    log_p = np.log(np.maximum(np.asarray(probabilities, np.float64), TINY))
    errors = int((log_p.argmax(axis=1) != labels).sum())
    low, high = 1 / BOUNDS[1], 1 / BOUNDS[0]  # in 1/T
    slope_low, slope_high = nll_slope(log_p, labels, low), nll_slope(log_p, labels, high)
    if slope_low >= 0:  # rising from T = 20 on: no better than guessing, flatten as far as allowed
        return TemperatureFit(BOUNDS[1], False, len(labels), errors)
    if slope_high <= 0:  # still falling at T = 0.05: too few errors to stop the sharpening
        return TemperatureFit(BOUNDS[0], False, len(labels), errors)
    inverse = brentq(lambda b: nll_slope(log_p, labels, b), low, high, xtol=1e-9)
    return TemperatureFit(float(1 / inverse), True, len(labels), errors)
