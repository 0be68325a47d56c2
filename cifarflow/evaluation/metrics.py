"""Metrics from predicted probabilities: accuracy, cross-entropy, per-class report, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    # scikit-learn is imported here, not at module level: a cached re-run never computes metrics
    # and should not pay for the import
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
