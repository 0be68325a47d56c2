"""Model architectures. Each builder returns an *uncompiled* `keras.Model`; no training or I/O here."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def make_seed_model(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The classic notebook's CNN, layer for layer (394,970 parameters)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(12, (3, 3), activation="relu", padding="same", name="conv")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="hidden")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed")


def make_fast_model(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES) -> keras.Model:
    """airbench94's network, widths 64/256/256 (tasks/airbench.py; logits out, pixels 0..255 in)."""
    from tasks.airbench import make_fast_model as build

    return build(input_shape, num_classes)


def make_quick_model(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES) -> keras.Model:
    """airbench94's network narrowed to widths 32/64/128 (tasks/airbench.py)."""
    from tasks.airbench import make_quick_model as build

    return build(input_shape, num_classes)


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "seed": make_seed_model,
    "fast": make_fast_model,
    "quick": make_quick_model,
}


def make_model(name: str, input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES) -> keras.Model:
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"no builder for model {name!r}; known: {', '.join(sorted(BUILDERS))}") from None
    return builder(input_shape, num_classes)


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)
