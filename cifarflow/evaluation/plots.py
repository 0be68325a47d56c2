"""Matplotlib figures for the report. Headless (Agg) and written straight to PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from cifarflow.calibration.scores import expected_calibration_error, reliability_bins
from cifarflow.files import atomic_path

# no display on servers and CI; pyplot resolves its backend at the first figure, so this may follow the imports
matplotlib.use("Agg")
MAX_LABELLED = 30  # classes a confusion matrix names on its axes and counts in its cells


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_matrix_plot(
    matrix: np.ndarray,
    class_names: list[str],
    path: Path,
    title: str = "Confusion matrix",
    cmap: str = "Blues",
    center_zero: bool = False,
) -> Path:
    """(classes, classes) counts as a heat map whose size grows with the classes; beyond MAX_LABELLED classes the
    axes show class indices (the report's per-class table names them) and the cells no numbers."""
    count = len(class_names)
    side = min(6.5 + max(0, count - 10) * 0.35, 18)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    limit = np.abs(matrix).max() or 1
    image = ax.imshow(matrix, cmap=cmap, vmin=-limit if center_zero else 0, vmax=limit)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if count > MAX_LABELLED:
        ax.set(xlabel="predicted (class index)", ylabel="true (class index)")
        return save_figure(fig, path)
    ticks = range(count)
    ax.set(xticks=ticks, yticks=ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for (row, col), value in np.ndenumerate(matrix):
        strong = abs(value) > limit / 2
        ax.text(col, row, f"{value:d}", ha="center", va="center", fontsize=7, color="white" if strong else "black")
    return save_figure(fig, path)


def training_curves_plot(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "test (monitor)")):
            if history and key in history[0]:
                ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def sample_predictions_plot(pixels, labels: np.ndarray, predicted: np.ndarray, names: list[str], path: Path) -> Path:
    """A grid of 25 seeded random test images titled 'true → predicted' (red where wrong)."""
    chosen = np.sort(np.random.default_rng(0).choice(len(labels), size=min(25, len(labels)), replace=False))
    side = int(np.ceil(np.sqrt(len(chosen))))
    fig, axes = plt.subplots(side, side, figsize=(side * 1.9, side * 2.1))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, index in zip(np.ravel(axes), chosen):
        ax.imshow(np.asarray(pixels[index]))
        title = f"{names[labels[index]]}\n→ {names[predicted[index]]}"
        ax.set_title(title, fontsize=8, color="green" if labels[index] == predicted[index] else "red")
    fig.suptitle("Test images: true → predicted")
    return save_figure(fig, path)


def reliability_diagram(panels: list[tuple[str, np.ndarray]], labels: np.ndarray, path: Path, bins: int = 15) -> Path:
    """One panel per (title, (N, classes) probabilities): per bin, the accuracy and its gap to the confidence."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, probabilities) in zip(axes[0], panels):
        binned = reliability_bins(probabilities, labels, bins)
        filled = binned.counts > 0
        centres = ((binned.edges[:-1] + binned.edges[1:]) / 2)[filled]
        accuracy, confidence = binned.accuracy[filled], binned.confidence[filled]
        ax.bar(centres, accuracy, width=1.0 / bins, edgecolor="black", label="accuracy")
        gap = {"bottom": np.minimum(confidence, accuracy), "color": "tab:red", "alpha": 0.3, "hatch": "//"}
        ax.bar(centres, np.abs(confidence - accuracy), width=1.0 / bins, **gap, label="gap: mean confidence − accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ece = expected_calibration_error(probabilities, labels, bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)
