"""The calibrate stage: the evaluated test-set probabilities → one temperature that is part of the
model from here on, the calibrated probabilities, and honest scores of both.

How the test set is used (argued in the README, "Probabilities you can trust"): the model trained on
none of it, so it is the only held-out data there is. The deployed temperature is fitted on all of it.
The scores reported *after* scaling are cross-fitted, so no image is scored with a temperature its
own label helped choose: the test set's two fixed halves (`halves.half_of`) each get the temperature
fitted on the other. The scores *before* scaling are those of the raw probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.calibration.diagram import reliability_diagram
from cifarflow.calibration.halves import half_of
from cifarflow.calibration.scores import BINS, calibration_scores
from cifarflow.calibration.temperature import BOUNDS, apply_temperature, fit_temperature
from cifarflow.data.transform import load_split
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole

METHOD = "temperature scaling (Guo et al. 2017): one T, fitted by minimising NLL"
MIN_HALF = 10  # images a half needs for its own fit; below it, the scores after scaling are in-sample


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
        """The temperatures fitted on the test set's half A and half B (`halves.half_of`)."""
        halves = self.summary["half_temperatures"]
        return float(halves["A"]), float(halves["B"])


@dataclass(frozen=True)
class Fit:
    temperature: float  # fitted on every image: the one deployed
    half_temperatures: tuple[float, float]  # fitted on half A, on half B
    cross_fitted: np.ndarray  # (N, classes) float64: each half scaled with the other half's temperature
    crossed: bool  # False: a half was under MIN_HALF images, and `cross_fitted` is in-sample


def held_out_temperatures(in_a: np.ndarray, half_temperatures: tuple[float, float]) -> np.ndarray:
    """(N,) the temperature each image is scored with when no score may be in-sample: half A's
    images get the temperature fitted on half B, and the other way round."""
    t_a, t_b = half_temperatures
    return np.where(np.asarray(in_a, bool), t_b, t_a)


def cross_fit(probabilities: np.ndarray, labels: np.ndarray, in_a: np.ndarray) -> Fit:
    """The deployed temperature and cross-fitted probabilities for (N, classes) `probabilities`,
    (N,) `labels` and the (N,) bool half-A mask. Temperatures are rounded to 6 digits, as
    calibration.json and the export carry them. With a half under MIN_HALF images, both halves get
    the deployed temperature (`Fit.cross_fitted` is then in-sample)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).astype(np.int64)
    deployed = round(fit_temperature(probabilities, labels), 6)
    if min(in_a.sum(), (~in_a).sum()) < MIN_HALF:
        return Fit(deployed, (deployed, deployed), apply_temperature(probabilities, deployed), crossed=False)
    halves = (
        round(fit_temperature(probabilities[in_a], labels[in_a]), 6),
        round(fit_temperature(probabilities[~in_a], labels[~in_a]), 6),
    )
    return Fit(deployed, halves, apply_temperature(probabilities, held_out_temperatures(in_a, halves)), crossed=True)


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
    crossed = fit.crossed
    before, after = calibration_scores(raw, labels), calibration_scores(fit.cross_fitted, labels)
    at_bound = any(np.isclose(fit.temperature, bound, rtol=1e-3) for bound in BOUNDS)
    log(
        f"temperature {fit.temperature:.3f}: ECE {before.ece:.4f} → {after.ece:.4f}, "
        f"NLL {before.nll:.4f} → {after.nll:.4f} ({'cross-fitted on the test set' if crossed else 'in-sample'})"
        + (f"; T is at a bound of the search {BOUNDS}: the data did not pin it down" if at_bound else "")
    )
    summary = {
        "method": METHOD,
        "temperature": fit.temperature,
        "half_temperatures": {"A": fit.half_temperatures[0], "B": fit.half_temperatures[1]},
        "images": int(len(labels)),
        "halves": {"A": int(in_a.sum()), "B": int((~in_a).sum()), "rule": "parity of the first byte of sha256(pixels)"},
        "bins": BINS,
        "before": before.to_json(),
        "after": after.to_json(),
        "after_is": "cross-fitted: each half scaled with the temperature fitted on the other half"
        if crossed
        else f"in-sample: a half has fewer than {MIN_HALF} images, too few to fit on",
        "at_bound": bool(at_bound),
    }
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", apply_temperature(raw, fit.temperature).astype(np.float32))
        reliability_diagram(
            [
                ("before scaling", raw),
                (f"after (T = {fit.temperature:.2f}, {'cross-fitted' if crossed else 'in-sample'})", fit.cross_fitted),
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
