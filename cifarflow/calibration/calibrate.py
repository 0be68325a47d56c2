"""The calibrate stage: the evaluated test-set probabilities → one temperature that is part of the
model from here on, the calibrated probabilities, and honest scores of both.

How the test set is used (argued in the README, "Probabilities you can trust"): the model trained on
none of it, so it is the only held-out data there is. The deployed temperature is fitted on all of it.
The scores reported *after* scaling are cross-fitted, so no image is scored with a temperature its
own label helped choose: the test set's two fixed halves (`halves.half_of`) each get the temperature
fitted on the other. The scores *before* scaling are those of the raw probabilities.

A fit the data cannot support (no minimum inside the search, too few errors, halves too small to
check it or disagreeing, worse on held-out images: `unsupported_reasons`) is not deployed: the model
keeps T = SAFE_TEMPERATURE, and calibration.json, the log, the report and the model card say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.calibration.diagram import reliability_diagram
from cifarflow.calibration.halves import half_of
from cifarflow.calibration.scores import BINS, CalibrationScores, calibration_scores
from cifarflow.calibration.temperature import BOUNDS, TemperatureFit, apply_temperature, fit_temperature
from cifarflow.data.transform import load_split
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole

METHOD = "temperature scaling (Guo et al. 2017): one T, fitted by minimising NLL"
MIN_HALF = 10  # images a half needs for its own fit; below it, T cannot be checked on held-out images
MIN_ERRORS = 10  # misclassified images the fit needs: only they hold T up (`temperature.nll_slope`)
MAX_HALF_RATIO = 2.0  # the halves' temperatures may differ by at most this factor
# The temperature exported when the data cannot support the fit: 1 leaves the network's own
# probabilities as training made them, a claim of none but the network's; a bound of the search
# would make every answer near 1.0 (T = 0.05) or near uniform (T = 20) on no evidence.
SAFE_TEMPERATURE = 1.0


@dataclass(frozen=True)
class Calibration(StageOutput):
    directory: Path
    temperature: float
    summary_sha256: str  # of calibration.json, which names the temperature and every score

    @property
    def location(self) -> Path:
        return self.directory

    @property
    def fingerprint(self) -> str:
        return self.summary_sha256

    @property
    def probabilities_path(self) -> Path:
        """(N, classes) float32: the test set's probabilities with the temperature applied, what the
        exported model returns for these images."""
        return self.directory / "probabilities.npy"

    @property
    def summary(self) -> dict[str, Any]:
        return read_json(self.directory / "calibration.json")

    @property
    def half_temperatures(self) -> tuple[float, float]:
        """The temperatures half A's and half B's images are scored with, each fitted on the other
        half (`halves.half_of`); both SAFE_TEMPERATURE when the fit is unsupported."""
        halves = self.summary["half_temperatures"]
        return float(halves["A"]), float(halves["B"])


@dataclass(frozen=True)
class Fit:
    temperature: float  # the one deployed: the fit on every image, or SAFE_TEMPERATURE when `unsupported`
    half_temperatures: tuple[float, float]  # what half A's, half B's images are scored with (the other's fit)
    cross_fitted: np.ndarray  # (N, classes) float64: each half scaled with `half_temperatures`
    fitted: float  # what the search found on every image, deployed or not
    fitted_halves: tuple[float, float]  # what it found on half A, on half B
    unsupported: tuple[str, ...] = ()  # why the data cannot support `fitted` (empty: it is deployed)


def held_out_temperatures(in_a: np.ndarray, half_temperatures: tuple[float, float]) -> np.ndarray:
    """(N,) the temperature each image is scored with when no score may be in-sample: half A's
    images get the temperature fitted on half B, and the other way round."""
    t_a, t_b = half_temperatures
    return np.where(np.asarray(in_a, bool), t_b, t_a)


def unsupported_reasons(
    whole: TemperatureFit,
    halves: tuple[TemperatureFit, TemperatureFit] | None,
    raw: CalibrationScores,
    crossed: CalibrationScores,
) -> tuple[str, ...]:
    """Why a temperature fit is not to be deployed, one sentence each (empty: it is supported): the
    fit on every image (`whole`), on each half (None: a half under MIN_HALF images), and the scores of
    the raw and of the cross-fitted probabilities (a T that raises the held-out NLL or ECE is refused)."""
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

    reasons = [edge(whole, "every image")]
    if whole.errors < MIN_ERRORS:
        reasons.append(
            f"only {whole.errors} of {whole.images} images are misclassified (under {MIN_ERRORS}): T would rest on them"
        )
    if halves is None:
        reasons.append(
            f"a half of the {whole.images} images has under {MIN_HALF}: "
            "T cannot be checked on images it was not fitted on"
        )
    else:
        reasons += [edge(fit, f"half {name}") for fit, name in zip(halves, "AB")]
        t_a, t_b = halves[0].temperature, halves[1].temperature
        if max(t_a, t_b) / min(t_a, t_b) > MAX_HALF_RATIO:
            reasons.append(
                f"the halves disagree: T = {t_a:.3f} on half A, {t_b:.3f} on half B (over a factor {MAX_HALF_RATIO:g})"
            )
        for score in ("nll", "ece"):  # what scaling is for: both must not get worse on images T did not see
            before, after = getattr(raw, score), getattr(crossed, score)
            if after > before:
                reasons.append(
                    f"on held-out images it raises the {score.upper()} ({before:.4f} → {after:.4f}): "
                    "it does not carry over"
                )
    return tuple(reason for reason in reasons if reason)


def cross_fit(probabilities: np.ndarray, labels: np.ndarray, in_a: np.ndarray) -> Fit:
    """The deployed temperature and cross-fitted probabilities for (N, classes) `probabilities`,
    (N,) `labels` and the (N,) bool half-A mask. Temperatures are rounded to 6 digits, as
    calibration.json and the export carry them. A fit the data cannot support (`unsupported_reasons`)
    is not deployed: T = SAFE_TEMPERATURE, and every image is scored with it."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).astype(np.int64)
    whole = fit_temperature(probabilities, labels)
    fitted = round(whole.temperature, 6)
    halves = None
    if min(in_a.sum(), (~in_a).sum()) >= MIN_HALF:
        halves = (
            fit_temperature(probabilities[in_a], labels[in_a]),
            fit_temperature(probabilities[~in_a], labels[~in_a]),
        )
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
    """ValueError naming `source` unless `probabilities` is (len(labels), classes), finite, in 0..1,
    with rows summing to 1: a temperature fitted to anything else would be deployed silently."""
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
    """Fit the temperature to evaluation's test probabilities and write out_dir whole:
    calibration.json, probabilities.npy (calibrated), reliability.png (before and after)."""
    source = Path(evaluation_dir) / "probabilities.npy"
    raw = np.load(source)
    labels = np.asarray(load_split(features_dir, "test", "labels")).astype(np.int64)
    check_probabilities(raw, labels, source)
    in_a = half_of(load_split(features_dir, "test", "pixels"))
    fit = cross_fit(raw, labels, in_a)
    before, after = calibration_scores(raw, labels), calibration_scores(fit.cross_fitted, labels)
    if fit.unsupported:
        after_is = f"the network's own probabilities: the fitted T = {fit.fitted:.3f} is not deployed"
        log(
            f"temperature {fit.fitted:.3f} NOT deployed, T = {SAFE_TEMPERATURE:g} instead: "
            + "; ".join(fit.unsupported)
        )
    else:
        after_is = "cross-fitted: each half scaled with the temperature fitted on the other half"
        log(
            f"temperature {fit.temperature:.3f}: ECE {before.ece:.4f} → {after.ece:.4f}, "
            f"NLL {before.nll:.4f} → {after.nll:.4f} (cross-fitted)"
        )
    summary = {
        "method": METHOD,
        "temperature": fit.temperature,
        "half_temperatures": {"A": fit.half_temperatures[0], "B": fit.half_temperatures[1]},
        "fitted": {
            "temperature": fit.fitted,
            "half_temperatures": {"A": fit.fitted_halves[0], "B": fit.fitted_halves[1]},
        },
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
        reliability_diagram(
            [
                ("before scaling", raw),
                (f"after (T = {fit.temperature:.2f}, {after_is.split(':')[0]})", fit.cross_fitted),
            ],
            labels,
            staging / "reliability.png",
            BINS,
        )
        write_json(staging / "calibration.json", summary)
    return find_calibration(out_dir)


def find_calibration(directory: Path) -> Calibration | None:
    summary = directory / "calibration.json"

    def read() -> Calibration | None:
        if not (directory / "probabilities.npy").is_file() or not (directory / "reliability.png").is_file():
            return None
        return Calibration(directory, float(read_json(summary)["temperature"]), file_digest(summary))

    return read_whole(read)
