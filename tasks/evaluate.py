"""Stage 4, evaluate: a trained model + test features → metrics, predictions and plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, log_loss

from tasks.files import atomic_directory, file_digest, read_json, write_json
from tasks.preprocess import load_split

# How each trainer's models turn test features into class probabilities, and what to call that
# in the report. Models trained with test-time augmentation register their TTA here.
Predictor = Callable[[Any, Path], np.ndarray]


def predict_plain(model, features_dir: Path) -> np.ndarray:
    return model.predict(np.asarray(load_split(features_dir, "test", "x")), batch_size=1024, verbose=0)


def _predict_airbench(model, features_dir: Path) -> np.ndarray:
    from tasks.airbench import predict_airbench  # the fast presets' TTA, loaded only when used

    return predict_airbench(model, features_dir)


def _airbench_tta() -> str:
    from tasks.airbench import TTA_DESCRIPTION

    return TTA_DESCRIPTION


PREDICTORS: dict[str, tuple[Predictor, str | Callable[[], str]]] = {
    "keras_fit": (predict_plain, "none"),
    "airbench": (_predict_airbench, _airbench_tta),
}


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, cross-entropy, per-class report and confusion matrix from predicted probabilities."""
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
class Evaluation:
    directory: Path
    metrics_path: Path
    metrics_sha256: str
    test_accuracy: float

    @property
    def fingerprint(self) -> str:
        return self.metrics_sha256


def evaluate_model(
    model_path: Path, history_path: Path, features_dir: Path, trainer: str, out_dir: Path, log=print
) -> Evaluation:
    """Predict the test split, compute metrics, draw the plots; write out_dir whole."""
    import keras

    from tasks import plots

    meta = read_json(features_dir / "meta.json")
    class_names = meta["label_names"]
    predictor, tta = PREDICTORS[trainer]
    tta = tta() if callable(tta) else tta
    if trainer == "airbench":
        import tasks.airbench  # noqa: F401  registers the custom layers before loading
    model = keras.models.load_model(model_path)
    probabilities = predictor(model, features_dir)
    labels = np.asarray(load_split(features_dir, "test", "labels"))
    metrics = compute_metrics(labels, probabilities, class_names) | {"tta": tta}
    log(f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} (TTA: {tta})")
    with atomic_directory(out_dir) as staging:
        np.save(staging / "probabilities.npy", probabilities.astype(np.float32))
        plots.confusion_matrix_plot(
            np.array(metrics["confusion_matrix"]), class_names, staging / "confusion_matrix.png"
        )
        plots.training_curves_plot(read_json(history_path), staging / "training_curves.png")
        pixels = load_split(features_dir, "test", "pixels")
        plots.sample_predictions_plot(
            pixels, labels, probabilities.argmax(1), class_names, staging / "sample_predictions.png"
        )
        write_json(staging / "metrics.json", metrics)
    return Evaluation(
        out_dir, out_dir / "metrics.json", file_digest(out_dir / "metrics.json"), metrics["test_accuracy"]
    )
