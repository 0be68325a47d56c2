"""The classic preset's `model.fit` loop, with the stock Keras optimizer `KerasFitRecipe.optimizer` names."""

from __future__ import annotations

from pathlib import Path

import keras

from cifarflow.data.transform import load_split, read_features
from cifarflow.training.callbacks import DivergenceGuard
from cifarflow.training.run import TrainSettings


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizers)}")
    return optimizers[name](learning_rate=learning_rate)


def pixel_batches(features_dir: Path, split: str, batch_size: int, shuffle_seed: int | None = None):
    """Batches of (uint8 pixels, float32 one-hot labels), the arrays held once in memory."""
    import tensorflow as tf

    pixels = tf.constant(load_split(features_dir, split, "pixels"))
    targets = tf.constant(load_split(features_dir, split, "onehot"))

    def gather(indices):
        return tf.gather(pixels, indices), tf.cast(tf.gather(targets, indices), tf.float32)

    indices = tf.data.Dataset.range(int(pixels.shape[0]))
    if shuffle_seed is not None:
        indices = indices.shuffle(int(pixels.shape[0]), seed=shuffle_seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fit_keras(
    settings: TrainSettings, features_dir: Path, callbacks: list[keras.callbacks.Callback], verbose: int | str = "auto"
) -> keras.Model:
    """The classic `model.fit` loop; the test split is validation data for the report's curves only."""
    preset = settings.preset
    features = read_features(features_dir)
    classes, side = len(features.label_names), features.image_size
    model = preset.build(features.normalization, num_classes=classes, image_size=side, seed=settings.seed)
    optimizer = make_optimizer(preset.recipe.optimizer, settings.learning_rate)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(
        pixel_batches(features_dir, "train", settings.batch_size, shuffle_seed=settings.seed),
        epochs=settings.epochs,
        validation_data=pixel_batches(features_dir, "test", 1000),
        shuffle=False,  # the dataset reshuffles its indices itself
        callbacks=[DivergenceGuard(settings.learning_rate), *callbacks],
        verbose=verbose,
    )
    return model
