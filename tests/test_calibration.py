"""Calibration on synthetic probabilities whose calibration is known: the scores (ECE, NLL, Brier),
temperature scaling (fit, apply), the cross-fit over the test set's halves, and the halves themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cifarflow.calibration.calibrate import check_probabilities, cross_fit
from cifarflow.calibration.halves import half_of
from cifarflow.calibration.scores import (
    brier_score,
    calibration_scores,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from cifarflow.calibration.temperature import BOUNDS, apply_temperature, fit_temperature

pytestmark = pytest.mark.unit

CLASSES = 10


def with_confidence(confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, 10) rows whose top class is `predicted` with probability `confidence`, the rest shared equally."""
    rows = np.repeat(((1 - confidence) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    rows[np.arange(len(rows)), predicted] = confidence
    return rows


def labels_right(predicted: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Labels equal to `predicted` where `right`, another class elsewhere."""
    return np.where(right, predicted, (predicted + 1) % CLASSES)


def calibrated_sample(n: int, seed: int, sharpness: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: each label is drawn from its own row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, sharpness, (n, CLASSES))
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = (probabilities.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # one draw from each row
    return probabilities, labels


def test_ece_of_known_gaps():
    predicted = np.arange(1000) % CLASSES
    # confidence 0.8, right on exactly 80%: calibrated
    right = np.arange(1000) % 5 != 0
    calibrated = with_confidence(np.full(1000, 0.8), predicted)
    assert expected_calibration_error(calibrated, labels_right(predicted, right)) == pytest.approx(0.0, abs=1e-12)
    # confidence 0.9, right on 60%: overconfident by 0.3
    right = np.arange(1000) % 5 < 3
    probabilities = with_confidence(np.full(1000, 0.9), predicted)
    assert expected_calibration_error(probabilities, labels_right(predicted, right)) == pytest.approx(0.3)
    # two bins of 500: confidence 0.95 all right (gap 0.05) and 0.55 with 30% right (gap 0.25): (0.05 + 0.25) / 2
    confidence = np.where(np.arange(1000) < 500, 0.95, 0.55)
    right = (np.arange(1000) < 500) | (np.arange(1000) % 10 < 3)
    ece = expected_calibration_error(with_confidence(confidence, predicted), labels_right(predicted, right))
    assert ece == pytest.approx(0.15)


def test_reliability_bins_are_fifteen_equal_widths():
    predicted = np.zeros(4, int)
    binned = reliability_bins(with_confidence(np.array([0.1, 0.5, 0.51, 1.0]), predicted), predicted)
    assert len(binned.edges) == 16 and binned.counts.sum() == 4
    assert binned.counts[1] == 1  # 0.1 lies in (1/15, 2/15]
    assert binned.counts[7] == 2  # 0.5 and 0.51 in (7/15, 8/15]
    assert binned.counts[14] == 1  # 1.0 in the last bin
    assert np.isnan(binned.accuracy[0]) and binned.accuracy[14] == 1.0


def test_nll_and_brier_of_known_predictions():
    labels = np.arange(20) % CLASSES
    uniform = np.full((20, CLASSES), 1 / CLASSES)
    assert negative_log_likelihood(uniform, labels) == pytest.approx(math.log(CLASSES))
    assert brier_score(uniform, labels) == pytest.approx(0.9)  # 0.9² + 9 × 0.1²
    perfect = np.eye(CLASSES)[labels]
    assert negative_log_likelihood(perfect, labels) == pytest.approx(0.0, abs=1e-9)
    assert brier_score(perfect, labels) == 0.0
    wrong = np.eye(CLASSES)[(labels + 1) % CLASSES]
    assert brier_score(wrong, labels) == pytest.approx(2.0)
    assert math.isfinite(negative_log_likelihood(wrong, labels))  # a 0 for the true class is floored, not inf
    assert calibration_scores(np.zeros((0, CLASSES)), np.zeros(0, int)).ece == 0.0


def test_calibrated_probabilities_score_a_small_ece_and_a_sharpened_copy_a_large_one():
    probabilities, labels = calibrated_sample(20_000, seed=1)
    assert expected_calibration_error(probabilities, labels) < 0.015  # only binning noise
    overconfident = apply_temperature(probabilities, 0.5)
    underconfident = apply_temperature(probabilities, 2.0)
    assert expected_calibration_error(overconfident, labels) > 0.08
    assert expected_calibration_error(underconfident, labels) > 0.08
    sharp = calibration_scores(overconfident, labels)
    assert sharp.mean_confidence > sharp.accuracy


@pytest.mark.parametrize("distortion", [0.5, 2.0, 3.0])
def test_fit_recovers_the_temperature_that_undoes_a_distortion(distortion):
    probabilities, labels = calibrated_sample(10_000, seed=2)
    distorted = apply_temperature(probabilities, distortion)
    temperature = fit_temperature(distorted, labels)
    assert temperature == pytest.approx(1 / distortion, rel=0.08)
    fixed = apply_temperature(distorted, temperature)
    assert expected_calibration_error(fixed, labels) < 0.02
    assert negative_log_likelihood(fixed, labels) < negative_log_likelihood(distorted, labels)
    np.testing.assert_array_equal(fixed.argmax(1), distorted.argmax(1))  # accuracy unchanged


def test_fit_stays_within_bounds_and_handles_no_images():
    predicted = np.arange(100) % CLASSES
    separable = with_confidence(np.full(100, 0.6), predicted)
    temperature = fit_temperature(separable, predicted)  # all right: sharpen as far as the NLL still falls
    assert BOUNDS[0] <= temperature < 0.1
    assert negative_log_likelihood(apply_temperature(separable, temperature), predicted) < 1e-9
    assert fit_temperature(np.zeros((0, CLASSES)), np.zeros(0, int)) == 1.0


def test_apply_temperature_survives_zero_probabilities_and_rejects_bad_temperatures():
    rows = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
    out = apply_temperature(rows, 3.0)
    assert np.isfinite(out).all() and np.allclose(out.sum(1), 1)
    np.testing.assert_allclose(apply_temperature(rows, 1.0), rows, atol=1e-7)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            apply_temperature(rows, bad)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, (7, CLASSES), elements=st.floats(1e-6, 1.0)),
    st.floats(0.05, 20.0),
)
def test_scaling_keeps_the_top_class_and_gives_distributions(raw, temperature):
    probabilities = raw / raw.sum(1, keepdims=True)
    out = apply_temperature(probabilities, temperature)
    assert np.allclose(out.sum(1), 1.0) and (out >= 0).all()
    top = probabilities.max(1, keepdims=True)
    clear = (probabilities >= top * (1 - 1e-9)).sum(1) == 1  # ties may break either way
    np.testing.assert_array_equal(out.argmax(1)[clear], probabilities.argmax(1)[clear])


def test_cross_fit_scores_each_half_with_the_other_halfs_temperature():
    probabilities, labels = calibrated_sample(4_000, seed=3)
    distorted = apply_temperature(probabilities, 0.4)
    in_a = np.arange(4_000) % 2 == 0
    fit = cross_fit(distorted, labels, in_a)
    t_a, t_b = fit.half_temperatures
    assert t_a == pytest.approx(fit_temperature(distorted[in_a], labels[in_a]))
    np.testing.assert_allclose(fit.cross_fitted[in_a], apply_temperature(distorted[in_a], t_b))
    np.testing.assert_allclose(fit.cross_fitted[~in_a], apply_temperature(distorted[~in_a], t_a))
    assert fit.temperature == pytest.approx(fit_temperature(distorted, labels))
    assert expected_calibration_error(fit.cross_fitted, labels) < 0.03


def test_halves_follow_each_image_not_its_position():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (2_000, 32, 32, 3), dtype=np.uint8)
    halves = half_of(pixels)
    assert 900 < halves.sum() < 1_100  # about half each
    order = rng.permutation(2_000)
    np.testing.assert_array_equal(half_of(pixels[order]), halves[order])
    np.testing.assert_array_equal(half_of(pixels[:10]), halves[:10])  # the same whatever else the set holds


def test_a_half_too_small_to_fit_on_leaves_the_scores_in_sample():
    probabilities, labels = calibrated_sample(200, seed=5)
    in_a = np.arange(200) < 5  # 5 images in half A
    fit = cross_fit(probabilities, labels, in_a)
    assert fit.half_temperatures == (fit.temperature, fit.temperature)
    np.testing.assert_allclose(fit.cross_fitted, apply_temperature(probabilities, fit.temperature))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: np.where(np.arange(len(p))[:, None] == 3, np.nan, p), "1 rows with NaN"),
        (lambda p: p[:-1], "shape"),
        (lambda p: p * 2, "not probability distributions"),
        (lambda p: p[:, 0], "shape"),
    ],
)
def test_probabilities_that_are_not_distributions_are_refused_by_name(tmp_path, change, message):
    probabilities, labels = calibrated_sample(50, seed=6)
    with pytest.raises(ValueError, match=message) as refused:
        check_probabilities(change(probabilities), labels, tmp_path / "probabilities.npy")
    assert "probabilities.npy cannot be calibrated" in str(refused.value)
    check_probabilities(probabilities, labels, tmp_path / "probabilities.npy")  # the untouched ones pass
