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
from cifarflow.calibration.temperature import apply_temperature, fit_temperature
from cifarflow.data.transform import load_split
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole

METHOD = "temperature scaling (Guo et al. 2017): one T, fitted by minimising NLL"


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


@dataclass(frozen=True)
class Fit:
    temperature: float  # fitted on every image: the one deployed
    half_temperatures: tuple[float, float]  # fitted on half A, on half B
    cross_fitted: np.ndarray  # (N, classes) float64: each half scaled with the other half's temperature


def cross_fit(probabilities: np.ndarray, labels: np.ndarray, in_a: np.ndarray) -> Fit:
    """The deployed temperature and cross-fitted probabilities for (N, classes) `probabilities`,
    (N,) `labels` and the (N,) bool half-A mask."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels).astype(np.int64)
    t_a, t_b = fit_temperature(probabilities[in_a], labels[in_a]), fit_temperature(probabilities[~in_a], labels[~in_a])
    crossed = np.empty_like(probabilities)
    crossed[in_a] = apply_temperature(probabilities[in_a], t_b)
    crossed[~in_a] = apply_temperature(probabilities[~in_a], t_a)
    return Fit(fit_temperature(probabilities, labels), (t_a, t_b), crossed)


def calibrate_model(evaluation_dir: Path, features_dir: Path, out_dir: Path, log=print) -> Calibration:
    """Fit the temperature to evaluation's test probabilities and write out_dir whole:
    calibration.json, probabilities.npy (calibrated), reliability.png (before and after)."""
    raw = np.load(Path(evaluation_dir) / "probabilities.npy")
    labels = np.asarray(load_split(features_dir, "test", "labels")).astype(np.int64)
    in_a = half_of(load_split(features_dir, "test", "pixels"))
    fit = cross_fit(raw, labels, in_a)
    before, after = calibration_scores(raw, labels), calibration_scores(fit.cross_fitted, labels)
    log(
        f"temperature {fit.temperature:.3f}: ECE {before.ece:.4f} → {after.ece:.4f}, "
        f"NLL {before.nll:.4f} → {after.nll:.4f} (cross-fitted on the test set's halves)"
    )
    summary = {
        "method": METHOD,
        "temperature": round(fit.temperature, 6),
        "half_temperatures": {"A": round(fit.half_temperatures[0], 6), "B": round(fit.half_temperatures[1], 6)},
        "images": int(len(labels)),
        "halves": {"A": int(in_a.sum()), "B": int((~in_a).sum()), "rule": "parity of the first byte of sha256(pixels)"},
        "bins": BINS,
        "before": before.to_json(),
        "after": after.to_json(),
        "after_is": "cross-fitted: each half scaled with the temperature fitted on the other half",
    }
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", apply_temperature(raw, fit.temperature).astype(np.float32))
        reliability_diagram(
            [("before scaling", raw), (f"after (T = {fit.temperature:.2f}, cross-fitted)", fit.cross_fitted)],
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
