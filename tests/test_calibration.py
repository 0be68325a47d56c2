"""Calibration on synthetic probabilities whose calibration is known: the scores (ECE, NLL, Brier),
temperature scaling (fit, apply), the cross-fit over the test set's halves, and the halves themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cifarflow.calibration.calibrate import (
    SAFE_TEMPERATURE,
    apply_temperature,
    calibrate_model,
    check_probabilities,
    cross_fit,
    fit_temperature,
    half_of,
)
from cifarflow.calibration.scores import (
    brier_score,
    calibration_scores,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

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
    fit = fit_temperature(distorted, labels)
    assert fit.interior
    temperature = fit.temperature
    assert temperature == pytest.approx(1 / distortion, rel=0.08)
    fixed = apply_temperature(distorted, temperature)
    assert expected_calibration_error(fixed, labels) < 0.02
    assert negative_log_likelihood(fixed, labels) < negative_log_likelihood(distorted, labels)
    np.testing.assert_array_equal(fixed.argmax(1), distorted.argmax(1))  # accuracy unchanged


def test_fit_stays_within_bounds_and_handles_no_images():
    predicted = np.arange(100) % CLASSES
    separable = with_confidence(np.full(100, 0.6), predicted)
    fit = fit_temperature(separable, predicted)  # all right: the NLL falls all the way to the bound
    assert (fit.temperature, fit.interior, fit.errors) == (0.05, False, 0)
    assert negative_log_likelihood(apply_temperature(separable, fit.temperature), predicted) < 1e-9
    guessing = fit_temperature(separable, (predicted + 1) % CLASSES)  # all wrong: flatten as far as allowed
    assert (guessing.temperature, guessing.interior, guessing.errors) == (20.0, False, 100)
    assert (fit_temperature(np.zeros((0, CLASSES)), np.zeros(0, int)).temperature, fit.interior) == (1.0, False)


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
    assert fit.unsupported == () and fit.fitted == fit.temperature
    assert t_a == pytest.approx(fit_temperature(distorted[in_a], labels[in_a]).temperature)
    np.testing.assert_allclose(fit.cross_fitted[in_a], apply_temperature(distorted[in_a], t_b))
    np.testing.assert_allclose(fit.cross_fitted[~in_a], apply_temperature(distorted[~in_a], t_a))
    assert fit.temperature == pytest.approx(1 / 0.4, rel=0.08)
    assert expected_calibration_error(fit.cross_fitted, labels) < 0.03


def test_halves_follow_each_image_not_its_position():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (2_000, 32, 32, 3), dtype=np.uint8)
    halves = half_of(pixels)
    assert 900 < halves.sum() < 1_100  # about half each
    order = rng.permutation(2_000)
    np.testing.assert_array_equal(half_of(pixels[order]), halves[order])
    np.testing.assert_array_equal(half_of(pixels[:10]), halves[:10])  # the same whatever else the set holds


def test_a_half_too_small_to_check_the_fit_on_keeps_the_safe_temperature():
    probabilities, labels = calibrated_sample(200, seed=5)
    in_a = np.arange(200) < 5  # 5 images in half A
    fit = cross_fit(apply_temperature(probabilities, 0.5), labels, in_a)
    assert fit.temperature == SAFE_TEMPERATURE == 1.0 and fit.half_temperatures == (1.0, 1.0)
    assert fit.fitted == pytest.approx(2.0, rel=0.3)  # found, not deployed
    assert any("cannot be checked on images it was not fitted on" in reason for reason in fit.unsupported)
    np.testing.assert_allclose(fit.cross_fitted, apply_temperature(probabilities, 0.5))  # the network's own


def all_right(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking rows whose top class is every image's label (the issue's case: no error)."""
    probabilities, _ = calibrated_sample(n, seed)
    return probabilities, probabilities.argmax(axis=1)


def with_errors(n: int, errors: int, seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """`all_right` with the label moved off the top class on `errors` images spread over both halves."""
    probabilities, labels = all_right(n, seed)
    wrong = np.arange(errors) * (n // max(errors, 1))
    labels[wrong] = (labels[wrong] + 1) % CLASSES
    return probabilities, labels


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (lambda: all_right(2_000), "it keeps falling toward T = 0.05"),  # the issue: T = 0.066, at_bound false
        (lambda: with_errors(2_000, 3), "only 3 of 2000 images are misclassified"),  # a minimum, on 3 images
        (lambda: all_right(2_000)[:1] + ((all_right(2_000)[1] + 3) % CLASSES,), "toward T = 20.0"),  # all wrong
        (lambda: calibrated_sample(15, seed=9), "has under 10"),  # too few images to check on held-out ones
    ],
    ids=["every-image-right", "three-errors", "every-image-wrong", "fifteen-images"],
)
def test_a_fit_the_data_cannot_support_is_not_deployed(case, reason):
    probabilities, labels = case()
    fit = cross_fit(probabilities, labels, np.arange(len(labels)) % 2 == 0)
    assert fit.temperature == 1.0 and fit.half_temperatures == (1.0, 1.0)
    assert any(reason in sentence for sentence in fit.unsupported), fit.unsupported
    np.testing.assert_allclose(fit.cross_fitted, probabilities, atol=1e-12)  # scored as exported: unscaled


def test_halves_that_disagree_are_not_deployed():
    probabilities, labels = calibrated_sample(4_000, seed=10)
    in_a = np.arange(4_000) % 2 == 0
    mixed = np.where(in_a[:, None], apply_temperature(probabilities, 0.4), apply_temperature(probabilities, 2.0))
    fit = cross_fit(mixed, labels, in_a)  # half A wants T ≈ 2.5, half B T ≈ 0.5: the whole fit lies between
    assert fit.temperature == 1.0
    assert any("the halves disagree" in reason for reason in fit.unsupported), fit.unsupported


def test_a_fit_that_lowers_the_nll_but_raises_the_held_out_ece_is_not_deployed():
    """A few images saturated to probability exactly 1 (some wrong) pull the NLL's T up to about 1.5: the
    NLL falls, but every other image is flattened, and the held-out ECE more than doubles."""
    probabilities, labels = calibrated_sample(2_000, seed=0, sharpness=2.5)
    saturated = np.random.default_rng(1).random(2_000) < 0.02
    probabilities[saturated] = np.eye(CLASSES)[probabilities[saturated].argmax(axis=1)]
    fit = cross_fit(probabilities, labels, np.arange(2_000) % 2 == 0)
    assert 1.2 < fit.fitted < 2.5  # an interior minimum of the NLL, not a bound
    assert fit.temperature == 1.0
    assert [reason for reason in fit.unsupported if "raises the ECE" in reason], fit.unsupported


def test_an_all_right_calibration_set_is_flagged_in_the_report_and_model_card(tmp_path):
    """The flow's path: calibrate_model on an evaluation and features directory whose model is right on
    every test image, then the report the report stage writes from it."""
    from cifarflow.data.transform import fit_normalization
    from cifarflow.files import read_json
    from cifarflow.reporting.report import calibration_section, describe_temperature, temperature_facts
    from tests.synthetic import write_features

    probabilities, labels = all_right(400)
    pixels = np.random.default_rng(11).integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)
    features = write_features(tmp_path / "features", pixels, labels, fit_normalization(pixels, "unit"), split="test")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    np.save(evaluation / "probabilities.npy", probabilities.astype(np.float32))
    logged = []
    calibration = calibrate_model(evaluation, features, tmp_path / "calibration", log=logged.append)

    assert calibration.temperature == 1.0  # what promote hands to the export
    np.testing.assert_allclose(np.load(calibration.probabilities_path), probabilities, atol=1e-6)  # unscaled
    summary = read_json(tmp_path / "calibration" / "calibration.json")
    assert summary["fitted"]["temperature"] == 0.05 and summary["errors"] == 0
    assert summary["after"] == summary["before"]
    assert "NOT deployed, T = 1 instead" in logged[-1] and "keeps falling toward T = 0.05" in logged[-1]
    section = calibration_section(summary)
    assert "**Temperature not deployed: the 400 test images (0 misclassified) cannot support a fit.**" in section
    assert "The exported model keeps **T = 1**" in section and "keeps falling toward T = 0.05" in section
    assert describe_temperature(summary).startswith("1.0000 (in the exported model: the network's own probabilities")
    assert temperature_facts(summary)["exported"] == 1.0 and temperature_facts(summary)["unsupported"]


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
