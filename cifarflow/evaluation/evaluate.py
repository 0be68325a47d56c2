"""Stage 4, evaluate: a trained model + the test split → metrics, predictions and plots."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.data.transform import load_split, read_features
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.models.presets import get_preset
from cifarflow.outputs import StageOutput, read_whole


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """metrics.json's evaluation part; `test_loss`: the cross-entropy of probabilities clipped to 1e-7."""
    from sklearn.metrics import classification_report, confusion_matrix, log_loss

    labels = np.asarray(labels).astype(int)
    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(class_names)))
    return {
        "test_accuracy": float((predicted == labels).mean()),
        "test_loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=classes)),
        "classification_report": classification_report(
            labels, predicted, labels=classes, target_names=class_names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "class_names": list(class_names),
    }


@dataclass(frozen=True)
class Evaluation(StageOutput):
    directory: Path
    metrics_path: Path
    metrics_sha256: str
    test_accuracy: float

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("metrics_sha256"))


def evaluate_model(
    model_path: Path, history_path: Path, features_dir: Path, preset_name: str, out_dir: Path, log=print
) -> Evaluation:
    """Write out_dir whole: the test split's probabilities, metrics.json and the plots."""
    from cifarflow.evaluation import plots

    preset = get_preset(preset_name)
    names = read_features(features_dir).label_names
    pixels = load_split(features_dir, "test", "pixels")
    probabilities = preset.predict(preset.load(model_path), pixels)
    labels = np.asarray(load_split(features_dir, "test", "labels"))
    metrics = compute_metrics(labels, probabilities, names) | {"tta": preset.tta}
    log(f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} (TTA: {preset.tta})")
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", probabilities.astype(np.float32))
        plots.confusion_matrix_plot(np.array(metrics["confusion_matrix"]), names, staging / "confusion_matrix.png")
        plots.training_curves_plot(read_json(history_path), staging / "training_curves.png")
        predicted = probabilities.argmax(1)
        plots.sample_predictions_plot(pixels, labels, predicted, names, staging / "sample_predictions.png")
        write_json(staging / "metrics.json", metrics)
    return find_evaluation(out_dir)


def find_evaluation(directory: Path) -> Evaluation | None:
    metrics = directory / "metrics.json"
    return read_whole(lambda: Evaluation(directory, metrics, file_digest(metrics), read_json(metrics)["test_accuracy"]))
