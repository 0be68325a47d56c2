"""The robustness stage's table on synthetic images and a real (if simple) classifier: every corruption
at three severities, mildest first, severity 2 being the library's default (the drift benchmark's), the
figures being the classifier's accuracy on the corrupted images."""

from __future__ import annotations

import numpy as np
import pytest

from cifarflow.calibration.temperature import apply_temperature
from cifarflow.data.corruptions import corrupt
from cifarflow.robustness.robustness import SEVERITIES, corrupted_sets, robustness_table

pytestmark = pytest.mark.unit

PALETTE = np.array(
    [[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [200, 40, 200], [40, 200, 200]], np.float64
)


def coloured_images(per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images of one colour per class with a little texture: a colour classifier gets them all right."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(PALETTE)), per_class)
    texture = rng.normal(0, 12, (len(labels), 32, 32, 3))
    images = np.clip(PALETTE[labels][:, None, None, :] + texture, 0, 255).astype(np.uint8)
    return images, labels


def nearest_colour(images: np.ndarray) -> np.ndarray:
    """Probabilities from the distance of each image's mean colour to the palette's (softmax of −d/20)."""
    distance = np.linalg.norm(images.reshape(len(images), -1, 3).mean(1)[:, None, :] - PALETTE[None], axis=2)
    logits = -distance / 20
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def test_severity_two_is_the_librarys_default_and_severities_grow():
    images, _ = coloured_images(4)
    sets = corrupted_sets(images)
    assert [(name, severity) for name, severity, _ in sets] == [(n, s) for n in SEVERITIES for s in (1, 2, 3)]
    for name, severity, corrupted in sets:
        assert corrupted.shape == images.shape and corrupted.dtype == np.uint8
        if severity == 2:  # the same "blur" as the drift monitor's benchmark
            np.testing.assert_array_equal(corrupted, corrupt(images, name, seed=2))
    for name in SEVERITIES:
        change = [np.abs(c.astype(int) - images).mean() for n, _, c in sets if n == name]
        assert change[0] < change[1] < change[2], f"{name}: severities not mildest first ({change})"


def test_table_scores_the_classifier_on_every_corrupted_copy():
    images, labels = coloured_images()
    clean = apply_temperature(nearest_colour(images), 0.5)
    table = robustness_table(nearest_colour, images, labels, clean, temperature=0.5)
    assert table["images"] == len(labels) and table["clean_accuracy"] == 1.0
    assert list(table["corruptions"]) == list(SEVERITIES)
    for name, entry in table["corruptions"].items():
        assert len(entry["accuracy"]) == len(entry["ece"]) == 3 and entry["severities"] == list(SEVERITIES[name][2])
    brightness = table["corruptions"]["brightness"]["accuracy"]
    assert brightness[2] < 1.0 and brightness[2] <= brightness[0]  # ×0.3 darkens colours into their neighbours
    expected = nearest_colour(corrupt(images, "brightness", seed=2)).argmax(1) == labels  # severity 2, directly
    assert brightness[1] == pytest.approx(expected.mean())
    every = [a for entry in table["corruptions"].values() for a in entry["accuracy"]]
    assert table["mean_corruption_accuracy"] == pytest.approx(np.mean(every), abs=1e-6)
