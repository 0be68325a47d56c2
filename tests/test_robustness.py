"""The robustness stage's table on synthetic images and a real (if simple) classifier: every corruption
at three severities, mildest first, severity 2 being the library's default (the drift benchmark's), the
figures being the classifier's accuracy on the corrupted images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifarflow.calibration.calibrate import apply_temperature
from cifarflow.calibration.scores import expected_calibration_error
from cifarflow.data.corruptions import corrupt
from cifarflow.robustness.robustness import SEVERITIES, corrupted_sets, score_corruptions

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
    sets = list(corrupted_sets(images))
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
    temperatures = np.where(np.arange(len(labels)) % 2 == 0, 0.5, 2.0)  # one per image, as cross-fitted
    table = score_corruptions(nearest_colour, images, labels, nearest_colour(images), temperatures)
    assert table["images"] == len(labels) and table["clean_accuracy"] == 1.0
    clean_ece = expected_calibration_error(apply_temperature(nearest_colour(images), temperatures), labels)
    assert table["clean_ece"] == pytest.approx(clean_ece, abs=1e-6)
    assert list(table["corruptions"]) == list(SEVERITIES)
    for name, entry in table["corruptions"].items():
        assert len(entry["accuracy"]) == len(entry["ece"]) == 3 and entry["severities"] == list(SEVERITIES[name][2])
    brightness = table["corruptions"]["brightness"]["accuracy"]
    assert brightness[2] < 1.0 and brightness[2] <= brightness[0]  # ×0.3 darkens colours into their neighbours
    darker = nearest_colour(corrupt(images, "brightness", seed=2))  # severity 2, directly
    assert brightness[1] == pytest.approx((darker.argmax(1) == labels).mean())
    scaled_ece = expected_calibration_error(apply_temperature(darker, temperatures), labels)  # each its own T
    assert table["corruptions"]["brightness"]["ece"][1] == pytest.approx(scaled_ece, abs=1e-6)
    assert scaled_ece != pytest.approx(expected_calibration_error(darker, labels), abs=1e-3)  # the T matters
    every = [a for entry in table["corruptions"].values() for a in entry["accuracy"]]
    assert table["mean_corruption_accuracy"] == pytest.approx(np.mean(every), abs=1e-6)


def score_with(robustness: dict | None, model_id: str):
    from cifarflow.promotion.decision import Score

    metrics = {} if robustness is None else {"robustness": robustness}
    return Score(model_id, "run", "classic", "d", "t", np.zeros(1), np.zeros(1), metrics)


def test_promotion_section_sets_both_models_robustness_side_by_side():
    from cifarflow.promotion.section import robustness_markdown

    images, labels = coloured_images(5)
    new = score_corruptions(nearest_colour, images, labels, nearest_colour(images), 1.0)
    old = new | {"clean_accuracy": 0.5, "mean_corruption_accuracy": 0.25}
    both = robustness_markdown(score_with(new, "b"), score_with(old, "a"))
    assert "| clean | 0.5000 | 1.0000 |" in both
    assert f"| **mean under corruption** | 0.2500 | {new['mean_corruption_accuracy']:.4f} |" in both
    assert all(f"| {name} |" in both for name in SEVERITIES)
    unmeasured = robustness_markdown(score_with(new, "b"), score_with(None, "a"))  # registered before the stage
    assert "| clean | – | 1.0000 |" in unmeasured
    other_images = robustness_markdown(score_with(new, "b"), score_with(old | {"images": 7}, "a"))
    assert "| clean | – |" in other_images  # not the same subset: not comparable
    assert robustness_markdown(score_with(None, "b"), None) == ""


def test_decisions_are_counted_per_test_set(tmp_path):
    from cifarflow.registry.store import decisions_on_test_set

    log = [
        {"test_set_sha256": "t1", "reason": "first"},
        {"test_set_sha256": "t1", "reason": "not-better"},
        {"test_set_sha256": "t1", "reason": "already-champion"},  # nothing was judged
        {"test_set_sha256": "t2", "reason": "better"},
        {"reason": "better"},  # logged before decisions named their test set
    ]
    (tmp_path / "decisions.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    assert decisions_on_test_set(tmp_path, "t1") == (2, 1)
    assert decisions_on_test_set(tmp_path, "t2") == (1, 1) and decisions_on_test_set(tmp_path, "t3") == (0, 1)
