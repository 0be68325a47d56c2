"""Stage 4, evaluate: a trained model + the test split → metrics, predictions and plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarflow.data.transform import load_split, read_features
from cifarflow.evaluation.metrics import compute_metrics
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.models.presets import get_preset
from cifarflow.outputs import StageOutput, read_whole


@dataclass(frozen=True)
class Evaluation(StageOutput):
    directory: Path
    metrics_path: Path
    metrics_sha256: str
    test_accuracy: float

    @property
    def location(self) -> Path:
        return self.directory

    @property
    def fingerprint(self) -> str:
        return self.metrics_sha256


def evaluate_model(
    model_path: Path, history_path: Path, features_dir: Path, preset_name: str, out_dir: Path, log=print
) -> Evaluation:
    """Predict the test split with the preset's predictor, compute metrics, draw the plots; write
    out_dir whole. The model applies its own normalization: it is fed the raw uint8 pixels."""
    from cifarflow.evaluation import plots

    preset = get_preset(preset_name)
    class_names = read_features(features_dir).label_names
    pixels = load_split(features_dir, "test", "pixels")
    probabilities = preset.predict(preset.load(model_path), pixels)
    labels = np.asarray(load_split(features_dir, "test", "labels"))
    metrics = compute_metrics(labels, probabilities, class_names) | {"tta": preset.tta}
    log(f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} (TTA: {preset.tta})")
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", probabilities.astype(np.float32))
        plots.confusion_matrix_plot(
            np.array(metrics["confusion_matrix"]), class_names, staging / "confusion_matrix.png"
        )
        plots.training_curves_plot(read_json(history_path), staging / "training_curves.png")
        plots.sample_predictions_plot(
            pixels, labels, probabilities.argmax(1), class_names, staging / "sample_predictions.png"
        )
        write_json(staging / "metrics.json", metrics)
    return find_evaluation(out_dir)


def find_evaluation(directory: Path) -> Evaluation | None:
    metrics = directory / "metrics.json"
    return read_whole(lambda: Evaluation(directory, metrics, file_digest(metrics), read_json(metrics)["test_accuracy"]))
