"""Predictors: a trained model + uint8 pixels → class probabilities. The presets name theirs
(`cifarflow.models.presets`) and pass what their network outputs (`outputs`: logits, turned into
probabilities by a softmax, or probabilities, used as they are), so no predictor assumes a head. The
fitted normalization is inside every model, so none of them preprocesses anything.

Each predictor has a serving twin (`serve_*`): the same arithmetic as one TensorFlow function of a
uint8 batch, which the export traces into the SavedModel, so a client of the exported artifact gets
the probabilities evaluation measured (the smoke test checks it before a promotion)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifarflow.models.precision import configure_threads
from cifarflow.models.presets import NetworkOutput
from cifarflow.training import augment

TTA_LEVEL = 2
BATCH_SIZE = 1000


def predict_plain(model: keras.Model, pixels: np.ndarray, *, outputs: NetworkOutput) -> np.ndarray:
    """The model's output on the pixels as they are, as probabilities."""
    output = model.predict(np.asarray(pixels), batch_size=BATCH_SIZE, verbose=0)
    return softmax(output).astype(np.float32) if outputs == "logits" else output


def tta_average(model: keras.Model, pixels: np.ndarray, level: int = TTA_LEVEL, batch_size: int = BATCH_SIZE):
    """Weighted average of the model's outputs (logits, for the airbench presets) over the TTA views
    (see `augment.tta_views`), in float64."""
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


def predict_tta(
    model: keras.Model, pixels: np.ndarray, *, outputs: NetworkOutput, level: int = TTA_LEVEL
) -> np.ndarray:
    """(N, classes) probabilities over the TTA views (airbench's level 2, 6 views): the softmax of the
    averaged logits, or the averaged probabilities of a network that outputs them."""
    configure_threads()
    averaged = tta_average(model, pixels, level)
    return (softmax(averaged) if outputs == "logits" else averaged).astype(np.float32)


def serve_plain(model: keras.Model, *, outputs: NetworkOutput):
    """`predict_plain` as a graph."""

    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        output = tf.cast(model(pixels, training=False), tf.float32)
        return tf.nn.softmax(output, axis=-1) if outputs == "logits" else output

    return probabilities


def serve_tta(model: keras.Model, *, outputs: NetworkOutput, level: int = TTA_LEVEL):
    """`predict_tta` as a graph: the weighted sum of the views' outputs, then softmax if they are logits."""
    views = augment.tta_views(level=level)

    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        averaged = 0.0
        for weight, dy, dx, flipped in views:
            view = augment.make_view(pixels, dy, dx, flipped)
            averaged = averaged + weight * tf.cast(model(view, training=False), tf.float32)
        return tf.nn.softmax(averaged, axis=-1) if outputs == "logits" else averaged

    return probabilities
