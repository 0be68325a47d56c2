"""The champion's penultimate-layer features and probabilities in one pass, for window and reference alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifarflow.data.statistics import pixel_value_counts
from cifarflow.files import atomic_path
from cifarflow.models.presets import get_preset
from cifarflow.monitoring.signals import Scored

BATCH_SIZE = 500

Embed = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_embedder(preset_name: str, model_path: Path) -> Embed:
    """(N, S, S, 3) uint8 → ((N, d) float32 features, (N, classes) float32 probabilities), for the
    `.keras` file at `model_path` built by the preset `preset_name`."""
    import keras

    from cifarflow.models.scoring import softmax

    preset = get_preset(preset_name)
    model = preset.load(model_path)
    network = keras.Model(model.input, [model.get_layer(preset.features).output, model.output])

    def embed(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, outputs = [], []
        for start in range(0, len(pixels), BATCH_SIZE):
            got = network(np.asarray(pixels[start : start + BATCH_SIZE], np.uint8), training=False)
            features.append(np.asarray(got[0], np.float32).reshape(len(got[0]), -1))
            outputs.append(np.asarray(got[1], np.float64))
        if not features:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        out = np.concatenate(outputs)
        probabilities = softmax(out) if preset.outputs == "logits" else out
        return np.concatenate(features), probabilities.astype(np.float32)

    return embed


def score(embed: Embed, pixels: np.ndarray) -> Scored:
    """The features, probabilities and pixel-value counts of (N, S, S, 3) uint8 `pixels`."""
    features, probabilities = embed(pixels)
    return Scored(features, probabilities, pixel_value_counts(pixels))


def save_scored(path: Path, scored: Scored) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, features=scored.features, probabilities=scored.probabilities, value_counts=scored.value_counts)
    return Path(path)


def load_scored(path: Path) -> Scored:
    with np.load(path) as saved:
        return Scored(saved["features"], saved["probabilities"], saved["value_counts"])
