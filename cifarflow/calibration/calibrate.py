"""The calibrate stage: a temperature fitted on every test image, scored cross-fitted over two fixed halves
(`half_of`); a fit the data cannot support is not deployed. Why: docs/explanation/calibration.md."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import numpy as np

from cifarflow.calibration.scores import BINS, TINY, CalibrationScores, calibration_scores
from cifarflow.data.shards import pixel_digest
from cifarflow.data.transform import load_split
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole

BOUNDS = (0.05, 20.0)  # the temperatures searched; a fit at a bound means the data could not pin T down


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float  # the minimiser in BOUNDS; a bound itself when `interior` is False
    interior: bool  # the NLL falls toward T from both ends of BOUNDS: a true minimum, not the search's edge
    images: int
    errors: int  # images whose top class is not their label: only these push T up (see `nll_slope`)


def apply_temperature(probabilities: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """(N, classes) probabilities → float64 softmax(log p / T), T one or (N,); ValueError for a T ≤ 0."""
    temperature = np.asarray(temperature, np.float64)
    if not np.all(temperature > 0):
        raise ValueError(f"a temperature must be positive, got {temperature}")
    divisor = temperature[:, None] if temperature.ndim == 1 else temperature
    from scipy.special import softmax

    return softmax(np.log(np.maximum(np.asarray(probabilities, np.float64), TINY)) / divisor, axis=1)


def nll_slope(log_p: np.ndarray, labels: np.ndarray, inverse: float) -> float:
    """d NLL / d(1/T) at 1/T = `inverse`: mean Σ_k q_k (log p_k − log p_label), q = softmax(log p / T)."""
    from scipy.special import softmax

    q = softmax(log_p * inverse, axis=1)
    gaps = log_p - log_p[np.arange(len(labels)), labels][:, None]
    return float(np.mean(np.sum(q * gaps, axis=1)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """Temperature scaling (Guo et al., 2017, §4.2): the T in BOUNDS minimising the NLL of softmax(log p / T), or
    the bound the NLL keeps falling toward (not `interior`); T = 1.0, not interior, for no images."""
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


MIN_HALF = 10  # images a half needs for its own fit; below it, T cannot be checked on held-out images
MIN_ERRORS = 10  # misclassified images the fit needs: only they hold T up (`temperature.nll_slope`)
MAX_HALF_RATIO = 2.0  # the halves' temperatures may differ by at most this factor
SAFE_TEMPERATURE = 1.0  # exported when the data cannot support the fit: the network's own probabilities


# --8<-- [start:calibration-output]
@dataclass(frozen=True)
class Calibration(StageOutput):
    directory: Path
    temperature: float
    summary_sha256: str  # of calibration.json, which names the temperature and every score

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("summary_sha256"))
    # --8<-- [end:calibration-output]

    @property
    def probabilities_path(self) -> Path:
        """(N, classes) float32: the test set's probabilities with the deployed temperature."""
        return self.directory / "probabilities.npy"

    @property
    def half_temperatures(self) -> tuple[float, float]:
        halves = read_json(self.directory / "calibration.json")["half_temperatures"]
        return float(halves["A"]), float(halves["B"])


@dataclass(frozen=True)
class Fit:
    temperature: float  # the one deployed: the fit on every image, or SAFE_TEMPERATURE when `unsupported`
    half_temperatures: tuple[float, float]  # what half A's, half B's images are scored with (the other's fit)
    cross_fitted: np.ndarray  # (N, classes) float64: each half scaled with `half_temperatures`
    fitted: float  # what the search found on every image, deployed or not
    fitted_halves: tuple[float, float]  # what it found on half A, on half B
    unsupported: tuple[str, ...] = ()  # why the data cannot support `fitted` (empty: it is deployed)


def half_of(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 images → (N,) bool, True for half A: the parity of the pixels' sha256's first byte."""
    return np.array([int(pixel_digest(image)[:2], 16) % 2 == 0 for image in pixels], bool).reshape(len(pixels))


def held_out_temperatures(in_a: np.ndarray, half_temperatures: tuple[float, float]) -> np.ndarray:
    """(N,) each image's held-out temperature: half A's get half B's, and the other way round."""
    t_a, t_b = half_temperatures
    return np.where(np.asarray(in_a, bool), t_b, t_a)


def unsupported_reasons(
    whole: TemperatureFit,
    halves: tuple[TemperatureFit, TemperatureFit] | None,
    raw: CalibrationScores,
    crossed: CalibrationScores,
) -> tuple[str, ...]:
    """Why a fit is not to be deployed, one sentence each (empty: it is); `halves` None: a half is under MIN_HALF."""
    low, high = BOUNDS

    def edge(fit: TemperatureFit, where: str) -> str | None:
        if fit.interior:
            return None
        toward = (
            f"T = {low} (sharpening always lowers it: {fit.errors} of {fit.images} images misclassified)"
            if fit.temperature == low
            else f"T = {high} (the probabilities are no better than a guess)"
        )
        return f"on {where} the NLL has no minimum inside T = {low}…{high}: it keeps falling toward {toward}"

    few = f"only {whole.errors} of {whole.images} images are misclassified (under {MIN_ERRORS}): T would rest on them"
    unmet = [(edge(whole, "every image"), True), (few, whole.errors < MIN_ERRORS)]
    if halves is None:
        small = f"a half of the {whole.images} images has under {MIN_HALF}"
        unmet.append((f"{small}: T cannot be checked on images it was not fitted on", True))
    else:
        t_a, t_b = halves[0].temperature, halves[1].temperature
        split = f"the halves disagree: T = {t_a:.3f} on half A, {t_b:.3f} on half B (over a factor {MAX_HALF_RATIO:g})"
        unmet += [(edge(halves[0], "half A"), True), (edge(halves[1], "half B"), True)]
        unmet.append((split, max(t_a, t_b) / min(t_a, t_b) > MAX_HALF_RATIO))
        for score in ("nll", "ece"):  # what scaling is for: both must not get worse on images T did not see
            before, after = getattr(raw, score), getattr(crossed, score)
            raised = f"on held-out images it raises the {score.upper()} ({before:.4f} → {after:.4f})"
            unmet.append((f"{raised}: it does not carry over", after > before))
    return tuple(reason for reason, applies in unmet if reason and applies)


def cross_fit(probabilities: np.ndarray, labels: np.ndarray, in_a: np.ndarray) -> Fit:
    """The fit for (N, classes) `probabilities`, (N,) `labels`, (N,) bool half-A mask; T rounded to 6 digits."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).astype(np.int64)
    whole = fit_temperature(probabilities, labels)
    fitted = round(whole.temperature, 6)
    halves = None
    if min(in_a.sum(), (~in_a).sum()) >= MIN_HALF:
        halves = tuple(fit_temperature(probabilities[mask], labels[mask]) for mask in (in_a, ~in_a))
    fitted_halves = tuple(round(fit.temperature, 6) for fit in halves) if halves else (fitted, fitted)
    scored = held_out_temperatures(in_a, fitted_halves) if halves else fitted
    cross_fitted = apply_temperature(probabilities, scored)
    reasons = unsupported_reasons(
        whole, halves, calibration_scores(probabilities, labels), calibration_scores(cross_fitted, labels)
    )
    if reasons:
        safe = SAFE_TEMPERATURE
        return Fit(safe, (safe, safe), apply_temperature(probabilities, safe), fitted, fitted_halves, reasons)
    return Fit(fitted, fitted_halves, cross_fitted, fitted, fitted_halves)


def check_probabilities(probabilities: np.ndarray, labels: np.ndarray, source: Path) -> None:
    """ValueError naming `source` unless `probabilities` is (len(labels), classes) of finite distributions."""
    problem = None
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        problem = f"shape {probabilities.shape} for {len(labels)} test labels"
    elif not np.isfinite(probabilities).all():
        problem = f"{int((~np.isfinite(probabilities)).any(axis=1).sum())} rows with NaN or infinite values"
    elif (probabilities < 0).any() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        problem = "rows that are not probability distributions (negative, or not summing to 1)"
    if problem:
        raise ValueError(f"{source} cannot be calibrated: {problem}; recompute it with --refresh evaluate")


def calibrate_model(evaluation_dir: Path, features_dir: Path, out_dir: Path, log=print) -> Calibration:
    """Write out_dir whole: calibration.json, probabilities.npy (calibrated), reliability.png."""
    from cifarflow.evaluation.plots import reliability_diagram

    source = Path(evaluation_dir) / "probabilities.npy"
    raw = np.load(source)
    labels = np.asarray(load_split(features_dir, "test", "labels")).astype(np.int64)
    check_probabilities(raw, labels, source)
    in_a = half_of(load_split(features_dir, "test", "pixels"))
    fit = cross_fit(raw, labels, in_a)
    before, after = calibration_scores(raw, labels), calibration_scores(fit.cross_fitted, labels)
    if fit.unsupported:
        after_is = f"the network's own probabilities: the fitted T = {fit.fitted:.3f} is not deployed"
        outcome = f"{fit.fitted:.3f} NOT deployed, T = {SAFE_TEMPERATURE:g} instead: {'; '.join(fit.unsupported)}"
    else:
        after_is = "cross-fitted: each half scaled with the temperature fitted on the other half"
        scores = f"ECE {before.ece:.4f} → {after.ece:.4f}, NLL {before.nll:.4f} → {after.nll:.4f} (cross-fitted)"
        outcome = f"{fit.temperature:.3f}: {scores}"
    log(f"temperature {outcome}")
    summary = {
        "method": "temperature scaling (Guo et al. 2017): one T, fitted by minimising NLL",
        "temperature": fit.temperature,
        "half_temperatures": dict(zip("AB", fit.half_temperatures)),
        "fitted": {"temperature": fit.fitted, "half_temperatures": dict(zip("AB", fit.fitted_halves))},
        "unsupported": list(fit.unsupported),  # why the fit is not deployed; empty: it is
        "images": int(len(labels)),
        "errors": int((raw.argmax(axis=1) != labels).sum()),
        "halves": {"A": int(in_a.sum()), "B": int((~in_a).sum()), "rule": "parity of the first byte of sha256(pixels)"},
        "bins": BINS,
        "before": before.to_json(),
        "after": after.to_json(),
        "after_is": after_is,
    }
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", apply_temperature(raw, fit.temperature).astype(np.float32))
        after_title = f"after (T = {fit.temperature:.2f}, {after_is.split(':')[0]})"
        panels = [("before scaling", raw), (after_title, fit.cross_fitted)]
        reliability_diagram(panels, labels, staging / "reliability.png", BINS)
        write_json(staging / "calibration.json", summary)
    return find_calibration(out_dir)


# --8<-- [start:find-calibration]
def find_calibration(directory: Path) -> Calibration | None:
    summary = directory / "calibration.json"

    def read() -> Calibration | None:
        if not (directory / "probabilities.npy").is_file() or not (directory / "reliability.png").is_file():
            return None
        return Calibration(directory, float(read_json(summary)["temperature"]), file_digest(summary))

    return read_whole(read)
    # --8<-- [end:find-calibration]
