"""What validation.json holds: the training data's class counts, per-part statistics, and the soft
problems (imbalance, drift, duplicates) worded as warnings."""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarflow.data.archive import NUM_CLASSES
from cifarflow.data.statistics import ChannelSums
from cifarflow.validation.checks import (
    DRIFT_PSI,
    IMBALANCE_RATIO,
    MIN_DRIFT_IMAGES,
    copies,
    drift,
    imbalance_ratio,
)
from cifarflow.validation.parts import Part


def dataset_statistics(base: Part, batches: list[Part], label_names: list[str]) -> dict[str, Any]:
    """The JSON-ready statistics of the training data (the ingested train split and the batches)."""
    warnings = []
    counts = np.bincount(np.concatenate([base.labels, *(b.labels for b in batches)]), minlength=NUM_CLASSES)
    ratio = imbalance_ratio(counts)
    if ratio > IMBALANCE_RATIO:
        most, least = label_names[counts.argmax()], label_names[counts.argmin()]
        warnings.append(
            f"class imbalance: {most} has {counts.max()} training images, {least} {counts.min()} "
            f"({ratio:.2f}×, over the {IMBALANCE_RATIO}× threshold)"
        )
    seen = set(base.digests)
    parts = [part_row(base, None)]
    for batch in batches:
        score = drift(base.values, batch.values, len(batch.labels))
        if score is not None and score > DRIFT_PSI:
            warnings.append(
                f"drift: {batch.name} has pixel PSI {score:.2f} against the ingested data (over {DRIFT_PSI}); "
                "its images look unlike the rest (brightness, colour or kind of picture)"
            )
        repeated = copies(batch.digests, seen)
        if repeated:
            warnings.append(f"duplicates: {repeated} images of {batch.name} are already in the training data")
        seen.update(batch.digests)
        parts.append(part_row(batch, score, repeated))
    return {
        "class_counts": dict(zip(label_names, counts.tolist())),
        "imbalance_ratio": round(ratio, 4),
        "ingested_duplicates": len(base.digests) - len(set(base.digests)),
        "parts": parts,
        "warnings": warnings,
        "thresholds": {
            "imbalance_ratio": IMBALANCE_RATIO,
            "drift_psi": DRIFT_PSI,
            "min_drift_images": MIN_DRIFT_IMAGES,
        },
    }


def part_row(part: Part, drift_psi: float | None, repeated: int = 0) -> dict[str, Any]:
    """One part's row: images, per-class counts, channel mean and std (pixel / 255, 4 decimals), its
    drift PSI (None when not scored) and how many of its images were already in the training data."""
    mean, std = ChannelSums.of_value_counts(part.values).mean_std()
    return {
        "name": part.name,
        "images": int(len(part.labels)),
        "class_counts": np.bincount(part.labels, minlength=NUM_CLASSES).tolist(),
        "channel_mean": [round(float(v), 4) for v in mean],
        "channel_std": [round(float(v), 4) for v in std],
        "drift_psi": None if drift_psi is None else round(drift_psi, 4),
        "duplicates": repeated,
    }
