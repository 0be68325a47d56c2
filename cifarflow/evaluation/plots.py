"""Matplotlib figures for the report. Headless (Agg) and written straight to PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from cifarflow.files import atomic_path

# No display on servers and CI. pyplot resolves its backend at the first figure, not at its import,
# and a switch to a non-interactive backend is always allowed, so this may follow the imports.
matplotlib.use("Agg")


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
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    limit = np.abs(matrix).max() or 1
    image = ax.imshow(matrix, cmap=cmap, vmin=-limit if center_zero else 0, vmax=limit)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(
        xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true", title=title
    )
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for (row, col), value in np.ndenumerate(matrix):
        strong = abs(value) > limit / 2
        ax.text(col, row, f"{value:d}", ha="center", va="center", fontsize=7, color="white" if strong else "black")
    return save_figure(fig, path)


def training_curves_plot(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "test (monitor)")):
        if history and key in history[0]:
            loss_ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "test (monitor)")):
        if history and key in history[0]:
            acc_ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
    loss_ax.set(title="Loss", xlabel="epoch")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def sample_predictions_plot(
    pixels: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    path: Path,
    count: int = 25,
    seed: int = 0,
) -> Path:
    """A grid of test images titled 'true / predicted' (red where wrong)."""
    chosen = np.sort(np.random.default_rng(seed).choice(len(labels), size=min(count, len(labels)), replace=False))
    side = int(np.ceil(np.sqrt(len(chosen))))
    fig, axes = plt.subplots(side, side, figsize=(side * 1.9, side * 2.1))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, index in zip(np.ravel(axes), chosen):
        ax.imshow(np.asarray(pixels[index]))
        right = labels[index] == predicted[index]
        ax.set_title(
            f"{class_names[labels[index]]}\n→ {class_names[predicted[index]]}",
            fontsize=8,
            color="green" if right else "red",
        )
    fig.suptitle("Test images: true → predicted")
    return save_figure(fig, path)
