"""Drift signals, each a pure function of arrays returning a `Signal`: input PSI, embedding MMD, prediction
chi-square, confidence KS. The three tests share the family-wise false-alarm rate `FAMILY_ALPHA` by Bonferroni
over the four signals (PSI counted as one); benchmarks/bench_monitor.py measures the rate on clean windows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from cifarflow.validation.checks import psi

FAMILY_ALPHA = 0.05
SIGNAL_NAMES = ("input", "embedding", "prediction", "confidence")
ALPHA = FAMILY_ALPHA / len(SIGNAL_NAMES)  # Bonferroni: per-test level
INPUT_PSI = 0.1  # "below 0.1 no real shift" (the validate stage's rule of thumb; its warning is at 0.25)
MIN_WINDOW = 100  # fewer images get no verdict: too few to judge
MMD_SAMPLES = 1_000  # per side; a bigger window is subsampled (the kernel matrix is (2n)², the test's cost)
MMD_PERMUTATIONS = 500  # p-values resolve to 1/501, well under ALPHA


@dataclass(frozen=True)
class Signal:
    """One signal's verdict. `statistic`: PSI (unitless), MMD² (squared kernel distance), chi-square or
    KS D; `threshold` for PSI, `p_value` for the tests; `test`: what was computed, for people."""

    name: str
    test: str
    statistic: float
    drift: bool
    threshold: float | None = None
    p_value: float | None = None

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None and key != "name"}


def input_drift(reference_counts: np.ndarray, window_counts: np.ndarray, threshold: float = INPUT_PSI) -> Signal:
    """Largest PSI over R, G, B of two (3, 256) int64 pixel-value counts, 16 bins (the validate stage's `psi`)."""
    value = psi(reference_counts, window_counts)
    return Signal("input", "PSI of 16-bin channel histograms, largest of R, G, B", value, value > threshold, threshold)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = MMD_PERMUTATIONS, max_samples: int = MMD_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """(MMD², p-value) of (n, d) and (m, d) float samples: the biased estimate with the Gaussian kernel
    k(a, b) = exp(−‖a − b‖² / (2 σ²)), σ² half the median squared distance of the pooled sample (the
    median heuristic), p = (1 + #{permuted MMD² ≥ observed}) / (1 + permutations). Each side is
    subsampled to `max_samples` rows (seeded) first."""
    rng = np.random.default_rng(seed)
    x, y = (s if len(s) <= max_samples else s[rng.choice(len(s), max_samples, replace=False)] for s in (x, y))
    pooled = np.concatenate([x, y]).astype(np.float64)
    squares = np.einsum("ij,ij->i", pooled, pooled)
    distances = np.maximum(squares[:, None] + squares[None, :] - 2 * pooled @ pooled.T, 0)
    median = np.median(distances[np.triu_indices(len(pooled), 1)])
    kernel = np.exp(-distances / max(median, 1e-12))
    n = len(x)
    signs = np.empty((len(pooled), permutations + 1))
    signs[:, 0] = np.r_[np.full(n, 1 / n), np.full(len(y), -1 / len(y))]
    for column in range(1, permutations + 1):
        signs[:, column] = rng.permutation(signs[:, 0])
    statistics = np.einsum("ip,ip->p", signs, kernel @ signs)  # wᵀKw for every labelling at once
    observed = float(statistics[0])
    return observed, float((1 + np.sum(statistics[1:] >= observed)) / (1 + permutations))


def embedding_drift(reference_features: np.ndarray, window_features: np.ndarray, alpha: float = ALPHA) -> Signal:
    """MMD permutation test (Gretton et al. 2012, JMLR 13) on (n, d) and (m, d) penultimate-layer features."""
    statistic, p_value = mmd_permutation_test(reference_features, window_features)
    return Signal("embedding", "MMD², Gaussian kernel, permutation test", statistic, p_value < alpha, p_value=p_value)


def prediction_drift(
    reference_classes: np.ndarray, window_classes: np.ndarray, classes: int, alpha: float = ALPHA
) -> Signal:
    """Chi-square test of homogeneity (scipy) that (n,), (m,) predicted class indices share one class mix."""
    table = np.stack([np.bincount(side, minlength=classes) for side in (reference_classes, window_classes)])
    table = table[:, table.sum(axis=0) > 0]  # a class neither side predicted says nothing
    if table.shape[1] < 2:
        return Signal("prediction", "chi-square test of the predicted-class counts", 0.0, False, p_value=1.0)
    result = stats.chi2_contingency(table)
    return Signal(
        "prediction",
        "chi-square test of the predicted-class counts",
        float(result.statistic),
        bool(result.pvalue < alpha),
        p_value=float(result.pvalue),
    )


def confidence_drift(reference_top: np.ndarray, window_top: np.ndarray, alpha: float = ALPHA) -> Signal:
    """Two-sample Kolmogorov–Smirnov test on (n,) and (m,) top probabilities (0–1)."""
    result = stats.ks_2samp(reference_top, window_top)
    return Signal(
        "confidence",
        "Kolmogorov–Smirnov test of the top probability",
        float(result.statistic),
        bool(result.pvalue < alpha),
        p_value=float(result.pvalue),
    )


@dataclass(frozen=True)
class Scored:
    """What the champion made of a set of images: (N, d) float32 penultimate features, (N, classes)
    float32 probabilities, and the (3, 256) int64 pixel-value counts of the images."""

    features: np.ndarray
    probabilities: np.ndarray
    value_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


def drift_signals(reference: Scored, window: Scored) -> list[Signal]:
    """The four signals of `window` against `reference`, in `SIGNAL_NAMES` order."""
    classes = reference.probabilities.shape[1]
    return [
        input_drift(reference.value_counts, window.value_counts),
        embedding_drift(reference.features, window.features),
        prediction_drift(reference.probabilities.argmax(1), window.probabilities.argmax(1), classes),
        confidence_drift(reference.probabilities.max(1), window.probabilities.max(1)),
    ]
