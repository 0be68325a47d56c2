"""The classic notebook's CNN: an *uncompiled* `keras.Model` and its loader; its training lives in
`cifarflow/training/keras_fit.py`."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from cifarflow.data.archive import NUM_CLASSES
from cifarflow.data.transform import Normalization
from cifarflow.models.inputs import normalize, pixel_input
from cifarflow.models.recipes import KerasFitRecipe


def make_classic_model(
    normalization: Normalization,
    recipe: KerasFitRecipe | None = None,
    *,
    num_classes: int = NUM_CLASSES,
    seed: int | None = None,
) -> keras.Model:
    """Conv2D(12) → MaxPool → Dense(128) → Dense(10) softmax, layer for layer (394,970 parameters),
    behind the input layer that applies `normalization` to uint8 pixels. (Weights are seeded
    globally by the trainer, as the notebook did; `seed` is part of the builder contract.)"""
    inputs = pixel_input()
    x = normalize(inputs, normalization)
    x = layers.Conv2D(12, (3, 3), activation="relu", padding="same", name="conv")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="hidden")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classic")


def load_classic_model(path: str | Path) -> keras.Model:
    """A saved seed network without its optimizer state: stock Keras layers, nothing to register."""
    return keras.models.load_model(path, compile=False)
