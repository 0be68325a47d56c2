"""Serving functions, named by the presets: a model → a TensorFlow function of a uint8 batch giving (n, classes)
probabilities. Evaluation, robustness, prediction and the export all run these, so they cannot disagree."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifarflow.models.precision import configure_threads
from cifarflow.models.presets import NetworkOutput
from cifarflow.training import augment

BATCH_SIZE = 1000


def predict_in_batches(serving, pixels: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, classes) float32 probabilities of (N, S, S, 3) uint8 pixels through a serving function."""
    configure_threads()
    batches = (tf.convert_to_tensor(np.asarray(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size))
    return np.concatenate([np.asarray(serving(batch), np.float32) for batch in batches])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def serve_plain(model: keras.Model, *, outputs: NetworkOutput):
    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        output = tf.cast(model(pixels, training=False), tf.float32)
        return tf.nn.softmax(output, axis=-1) if outputs == "logits" else output

    return probabilities


def serve_tta(model: keras.Model, *, outputs: NetworkOutput, level: int = 2):
    """The weighted sum of the network's outputs over `augment.tta_views(level)`, as probabilities."""
    views = augment.tta_views(level=level)

    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        averaged = 0.0
        for weight, dy, dx, flipped in views:
            view = augment.make_view(pixels, dy, dx, flipped)
            averaged = averaged + weight * tf.cast(model(view, training=False), tf.float32)
        return tf.nn.softmax(averaged, axis=-1) if outputs == "logits" else averaged

    return probabilities
