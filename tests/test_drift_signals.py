"""The drift signals (`cifarflow.monitoring.signals`) on synthetic arrays: each stays quiet on windows from
the reference's own distribution at its stated false-alarm rate and fires on a shifted one; the MMD
permutation test's statistic and p-value; `drift_signals` and its JSON; `pixel_value_counts`, exactly."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from cifarflow.data.statistics import pixel_value_counts
from cifarflow.monitoring.signals import (
    ALPHA,
    INPUT_PSI,
    SIGNAL_NAMES,
    Scored,
    confidence_drift,
    drift_signals,
    embedding_drift,
    input_drift,
    mmd_permutation_test,
    prediction_drift,
)

CLASSES = 10
MIX = np.array([0.15, 0.12, 0.11, 0.10, 0.10, 0.10, 0.09, 0.08, 0.08, 0.07])  # a reference's predicted classes
WINDOW = 100  # the smallest window the monitor judges (MIN_WINDOW)

# A test at level ALPHA on windows from the reference's own distribution alarms Binomial(n, ALPHA) times
# out of n; a correct test exceeds the 99.9% quantile of that count once in a thousand seed choices.
REPEATS = 200  # cheap tests
MMD_REPEATS = 40
MMD_PERMUTATIONS = 99  # p resolves to 1/100, under ALPHA = 0.0125, so p < ALPHA is reachable


def false_alarm_bound(repeats: int) -> int:
    return int(stats.binom.ppf(0.999, repeats, ALPHA))


@pytest.fixture
def one_blas_thread():
    """The MMD's kernel products are small matrix products; on a busy two-core machine OpenBLAS's
    threads wait for each other (10-20× slower), so these tests run them on one."""
    with threadpool_limits(1):
        yield


def photos(rng: np.random.Generator, count: int, brightness: float = 1.0) -> np.ndarray:
    """(count, 32, 32, 3) uint8 images with photo-like value spread: per-pixel texture plus a per-image
    exposure, scaled by `brightness`."""
    shape = (count, 32, 32, 3)
    texture = rng.integers(0, 160, shape, dtype=np.int16) + rng.integers(0, 96, shape, dtype=np.int16)
    exposure = np.rint(rng.normal(0, 25, (count, 1, 1, 1))).astype(np.int16)
    return np.clip(np.rint((texture + exposure) * brightness), 0, 255).astype(np.uint8)


def top_probabilities(rng: np.random.Generator, count: int, a: float = 8, b: float = 2) -> np.ndarray:
    return 0.1 + 0.9 * rng.beta(a, b, count)  # a ten-class model's top probability lies in [0.1, 1]


@pytest.mark.parametrize(
    ("predicted_zero", "p_value", "fires"), [(124, 0.0205, False), (125, 0.0156, False), (127, 0.0087, True)]
)
def test_a_test_fires_below_a_quarter_of_the_five_percent_family_rate(predicted_zero, p_value, fires):
    """Four signals share 5% (Bonferroni): a chi-square p of 0.02, which an uncorrected 5% test would call
    drift, does not fire; below 0.0125 it does. The p-values are scipy's for 100/100 against n/(200 − n)."""
    reference = np.repeat([0, 1], [100, 100])
    window = np.repeat([0, 1], [predicted_zero, 200 - predicted_zero])
    signal = prediction_drift(reference, window, classes=2)
    assert signal.p_value == pytest.approx(p_value, abs=1e-4) and signal.drift is fires


def test_pixel_value_counts_counts_each_channel_exactly():
    images = np.zeros((2, 1, 2, 3), np.uint8)
    images[..., 0] = [[[0, 255]], [[0, 7]]]
    images[..., 1] = 9
    images[..., 2] = [[[1, 2]], [[3, 255]]]
    counts = pixel_value_counts(images)
    assert counts.shape == (3, 256) and counts.dtype == np.int64
    expected = np.zeros((3, 256), np.int64)
    expected[0, [0, 7, 255]] = [2, 1, 1]
    expected[1, 9] = 4
    expected[2, [1, 2, 3, 255]] = 1
    np.testing.assert_array_equal(counts, expected)

    random = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    by_comparison = np.stack([(random[..., c].ravel()[:, None] == np.arange(256)).sum(axis=0) for c in range(3)])
    np.testing.assert_array_equal(pixel_value_counts(random), by_comparison)


def test_input_psi_is_zero_for_the_same_histogram_and_fires_on_half_brightness():
    images = np.random.default_rng(0).integers(0, 256, (WINDOW, 32, 32, 3), dtype=np.uint8)
    counts = pixel_value_counts(images)
    same = input_drift(counts, counts)
    assert same.statistic == 0.0 and not same.drift
    assert same.to_json()["threshold"] == INPUT_PSI

    darker = input_drift(counts, pixel_value_counts(np.rint(images * 0.5).astype(np.uint8)))
    assert darker.drift and darker.statistic > 10 * INPUT_PSI


def test_input_psi_stays_quiet_on_windows_of_the_same_photos():
    reference = pixel_value_counts(photos(np.random.default_rng(1_000), 5 * WINDOW))
    signals = [input_drift(reference, pixel_value_counts(photos(np.random.default_rng(s), WINDOW))) for s in range(40)]
    assert not any(s.drift for s in signals)
    assert max(s.statistic for s in signals) < INPUT_PSI / 2
    darker = [
        input_drift(reference, pixel_value_counts(photos(np.random.default_rng(s), WINDOW, 0.7))) for s in range(5)
    ]
    assert all(s.drift for s in darker)  # a camera a third darker


def test_prediction_chi_square_false_alarm_rate_and_a_flooding_class():
    alarms = floods = 0
    for seed in range(REPEATS):
        rng = np.random.default_rng(seed)
        reference = rng.choice(CLASSES, 1_000, p=MIX)
        alarms += prediction_drift(reference, rng.choice(CLASSES, WINDOW, p=MIX), CLASSES).drift
        flooded = np.where(rng.random(WINDOW) < 0.6, 3, rng.choice(CLASSES, WINDOW, p=MIX))  # 60% one class
        floods += prediction_drift(reference, flooded, CLASSES).drift
    assert alarms <= false_alarm_bound(REPEATS)
    assert floods == REPEATS


def test_prediction_chi_square_ignores_classes_neither_side_predicted():
    rng = np.random.default_rng(0)
    reference, window = rng.integers(0, 5, 1_000), rng.integers(0, 5, WINDOW)  # classes 5..9 never predicted
    signal = prediction_drift(reference, window, CLASSES)
    table = np.stack([np.bincount(reference, minlength=5), np.bincount(window, minlength=5)])
    expected = stats.chi2_contingency(table)
    assert math.isfinite(signal.p_value) and not signal.drift
    assert signal.statistic == pytest.approx(expected.statistic) and signal.p_value == pytest.approx(expected.pvalue)

    same_class = prediction_drift(np.full(1_000, 4), np.full(WINDOW, 4), CLASSES)
    assert same_class.statistic == 0.0 and same_class.p_value == 1.0 and not same_class.drift
    assert prediction_drift(np.full(1_000, 4), np.full(WINDOW, 7), CLASSES).drift  # one class swapped for another


def test_confidence_ks_false_alarm_rate_and_a_confidence_drop():
    alarms = drops = 0
    for seed in range(REPEATS):
        rng = np.random.default_rng(seed)
        reference = top_probabilities(rng, 1_000)
        alarms += confidence_drift(reference, top_probabilities(rng, WINDOW)).drift
        drops += confidence_drift(reference, top_probabilities(rng, WINDOW, a=4)).drift  # mean 0.82 → 0.70
    assert alarms <= false_alarm_bound(REPEATS)
    assert drops >= REPEATS - 2

    less_sure = top_probabilities(rng, WINDOW, a=4)
    signal = confidence_drift(reference, less_sure)
    expected = stats.ks_2samp(reference, less_sure)
    assert signal.statistic == expected.statistic and signal.p_value == expected.pvalue


def test_each_signal_fires_strictly_past_its_threshold_or_level(one_blas_thread):
    rng = np.random.default_rng(0)
    reference, window = pixel_value_counts(photos(rng, WINDOW)), pixel_value_counts(photos(rng, WINDOW, 0.9))
    psi_value = input_drift(reference, window).statistic
    assert not input_drift(reference, window, threshold=psi_value).drift
    assert input_drift(reference, window, threshold=math.nextafter(psi_value, 0)).drift
    tests = [
        (embedding_drift, (rng.normal(size=(60, 4)), rng.normal(0.2, 1, (50, 4)))),
        (prediction_drift, (rng.choice(CLASSES, 1_000, p=MIX), rng.choice(CLASSES, WINDOW, p=MIX[::-1]), CLASSES)),
        (confidence_drift, (top_probabilities(rng, 1_000), top_probabilities(rng, WINDOW, a=6))),
    ]
    for test, arguments in tests:
        assert inspect.signature(test).parameters["alpha"].default == ALPHA
        p_value = test(*arguments).p_value
        assert not test(*arguments, alpha=p_value).drift
        assert test(*arguments, alpha=math.nextafter(p_value, 1)).drift


def test_mmd_statistic_is_the_biased_estimate_with_the_median_heuristic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2)), rng.normal(1.0, 1.0, (4, 2))
    pooled = np.concatenate([x, y])
    squared = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    sigma_squared = np.median(squared[np.triu_indices(9, 1)]) / 2
    k = np.exp(-squared / (2 * sigma_squared))
    expected = k[:5, :5].mean() + k[5:, 5:].mean() - 2 * k[:5, 5:].mean()
    statistic, _ = mmd_permutation_test(x, y, permutations=9)
    assert statistic == pytest.approx(expected, rel=1e-9)


def test_mmd_p_value_resolution_range_and_seed(one_blas_thread):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    for permutations in (9, 49):
        statistic, p_value = mmd_permutation_test(x, y, permutations=permutations, seed=3)
        assert 0 < p_value <= 1
        count = p_value * (permutations + 1)  # 1 + how many permuted labellings reached the observed MMD²
        assert count == pytest.approx(round(count)) and 1 <= round(count) <= permutations + 1
        assert mmd_permutation_test(x, y, permutations=permutations, seed=3) == (statistic, p_value)
    shifted = mmd_permutation_test(x, y + 3, permutations=49)
    assert shifted[1] == pytest.approx(1 / 50)  # nothing permuted comes close: the smallest p there is
    big = rng.normal(size=(400, 4))  # subsampled to 30 rows per side, the same ones for the same seed
    assert mmd_permutation_test(big, big + 0.1, 19, max_samples=30, seed=1) == mmd_permutation_test(
        big, big + 0.1, 19, max_samples=30, seed=1
    )


@pytest.mark.parametrize(
    "shift", [lambda f: f + 0.5, lambda f: f * 1.6], ids=["mean moved by half a standard deviation", "spread times 1.6"]
)
def test_mmd_false_alarm_rate_and_power(shift, one_blas_thread):
    alarms = detections = 0
    for seed in range(MMD_REPEATS):
        rng = np.random.default_rng(seed)
        reference, same, other = (rng.normal(size=(150, 16)) for _ in range(3))
        alarms += mmd_permutation_test(reference, same, MMD_PERMUTATIONS, seed=seed)[1] < ALPHA
        detections += mmd_permutation_test(reference, shift(other), MMD_PERMUTATIONS, seed=seed)[1] < ALPHA
    assert alarms <= false_alarm_bound(MMD_REPEATS)
    assert detections >= MMD_REPEATS - 1


def scored(seed: int, shifted: bool = False) -> Scored:
    """A champion's view of 150 images; `shifted`: darker images, moved features, unsure answers."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.5 if shifted else 0.0, 1.0, (150, 16)).astype(np.float32)
    logits = rng.normal(0, 1, (150, CLASSES)) + np.eye(CLASSES)[rng.choice(CLASSES, 150, p=MIX)] * (1 if shifted else 4)
    if shifted:
        logits[:90, 3] += 6  # and most say "cat"
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    images = photos(rng, 150, 0.5 if shifted else 1.0)
    return Scored(features, probabilities.astype(np.float32), pixel_value_counts(images))


def test_drift_signals_name_the_four_in_order_and_fire_on_a_shifted_window(one_blas_thread):
    reference = scored(0)
    assert len(reference) == 150
    quiet = drift_signals(reference, scored(1))
    assert tuple(s.name for s in quiet) == SIGNAL_NAMES
    assert not any(s.drift for s in quiet), quiet
    for signal in quiet:
        document = signal.to_json()
        assert "name" not in document and {"test", "statistic", "drift"} <= document.keys()
        if signal.name == "input":
            assert document["threshold"] == INPUT_PSI and "p_value" not in document
        else:
            assert "threshold" not in document and 0 < document["p_value"] <= 1

    loud = drift_signals(reference, scored(2, shifted=True))
    assert [s.drift for s in loud] == [True] * 4, loud
    assert loud[1].p_value == pytest.approx(1 / 501)  # embedding_drift's own 500 permutations
    assert embedding_drift(reference.features, reference.features[::-1]).drift is False
