"""Predictors: a trained model + uint8 pixels → class probabilities. The presets name theirs
(`cifarflow.models.registry`); the fitted normalization is inside every model, so none of them
preprocesses anything.

Each predictor has a serving twin (`serve_*`): the same arithmetic as one TensorFlow function of a
uint8 batch, which the export traces into the SavedModel, so a client of the exported artifact gets
the probabilities evaluation measured (the smoke test checks it before a promotion)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifarflow.models.precision import configure_threads
from cifarflow.training import augment

TTA_LEVEL = 2
BATCH_SIZE = 1000


def predict_plain(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """The model's own output, which is already a probability distribution (softmax head)."""
    return model.predict(np.asarray(pixels), batch_size=BATCH_SIZE, verbose=0)


def tta_logits(model: keras.Model, pixels: np.ndarray, level: int = TTA_LEVEL, batch_size: int = BATCH_SIZE):
    """Weighted average of the model's logits over the TTA views (see `augment.tta_views`)."""
    total = None
    for start in range(0, len(pixels), batch_size):
        batch = tf.convert_to_tensor(np.asarray(pixels[start : start + batch_size]))
        logits = 0.0
        for weight, dy, dx, flipped in augment.tta_views(level=level):
            view = augment.make_view(batch, dy, dx, flipped)
            logits = logits + weight * np.asarray(model(view, training=False), np.float64)
        total = logits if total is None else np.concatenate([total, logits])
    return total


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict_tta(model: keras.Model, pixels: np.ndarray, level: int = TTA_LEVEL) -> np.ndarray:
    """(N, classes) probabilities: softmax of the TTA-averaged logits (airbench's level 2, 6 views)."""
    configure_threads()
    return softmax(tta_logits(model, pixels, level)).astype(np.float32)


def serve_plain(model: keras.Model):
    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(pixels, training=False), tf.float32)

    return probabilities


def serve_tta(model: keras.Model, level: int = TTA_LEVEL):
    """`predict_tta` as a graph: the weighted sum of the views' logits, then softmax."""
    views = augment.tta_views(level=level)

    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        logits = 0.0
        for weight, dy, dx, flipped in views:
            view = augment.make_view(pixels, dy, dx, flipped)
            logits = logits + weight * tf.cast(model(view, training=False), tf.float32)
        return tf.nn.softmax(logits, axis=-1)

    return probabilities
