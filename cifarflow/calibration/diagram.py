"""The reliability diagram: per confidence bin, accuracy against mean confidence, before and after
temperature scaling, side by side (a calibrated model's bars sit on the diagonal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarflow.calibration.scores import expected_calibration_error, reliability_bins


def reliability_diagram(panels: list[tuple[str, np.ndarray]], labels: np.ndarray, path: Path, bins: int = 15) -> Path:
    """One panel per (title, (N, classes) probabilities), written to `path` as a PNG: per bin, the
    accuracy as a bar and the gap to the bin's mean confidence hatched (above the bar: overconfident)."""
    import matplotlib.pyplot as plt

    from cifarflow.evaluation.plots import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (title, probabilities) in zip(axes[0], panels):
        binned = reliability_bins(probabilities, labels, bins)
        centres = (binned.edges[:-1] + binned.edges[1:]) / 2
        width = 1.0 / bins
        filled = binned.counts > 0
        ax.bar(centres[filled], binned.accuracy[filled], width=width, edgecolor="black", label="accuracy")
        gap_low = np.minimum(binned.confidence[filled], binned.accuracy[filled])
        ax.bar(
            centres[filled],
            np.abs(binned.confidence[filled] - binned.accuracy[filled]),
            bottom=gap_low,
            width=width,
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            hatch="//",
            label="gap: mean confidence − accuracy",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ece = expected_calibration_error(probabilities, labels, bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)
