"""The classic notebook's CNN (the `classic` preset)."""

from __future__ import annotations

import keras
from keras import layers

from cifarflow.data.transform import Normalization
from cifarflow.models.inputs import normalized_input
from cifarflow.models.presets import KerasFitRecipe


def make_classic_model(
    normalization: Normalization,
    recipe: KerasFitRecipe | None = None,
    *,
    num_classes: int,
    image_size: int,
    seed: int | None = None,
) -> keras.Model:
    """(N, image_size, image_size, 3) uint8 → Conv2D(12) → MaxPool → Dense(128) → Dense(num_classes) softmax;
    `seed` unused (the trainer seeds globally)."""
    inputs, x = normalized_input(normalization, image_size)
    x = layers.Conv2D(12, (3, 3), activation="relu", padding="same", name="conv")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="hidden")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classic")
