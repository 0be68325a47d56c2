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

import numpy as np

from cifarflow.calibration.scores import TINY

BOUNDS = (0.05, 20.0)  # the temperatures searched; a fit at a bound means the data could not pin T down


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


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in BOUNDS minimising the NLL of softmax(log p / T) on these images (scipy's bounded
    Brent search over 1/T, in which the NLL is convex). 1.0 for no images."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels).astype(np.int64)
    if len(labels) == 0:
        return 1.0
    log_p = np.log(np.maximum(np.asarray(probabilities, np.float64), TINY))

    def nll(inverse: float) -> float:
        scaled = log_p * inverse
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))

    low, high = BOUNDS
    found = minimize_scalar(nll, bounds=(1 / high, 1 / low), method="bounded", options={"xatol": 1e-6})
    return float(1 / found.x)
