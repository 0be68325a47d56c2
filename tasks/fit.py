"""The training loops (Keras `fit`) and the callback that journals every finished epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tasks.preprocess import load_split
from tasks.train import EpochHook, TrainSettings


class EpochRecorder(keras.callbacks.Callback):
    """Appends each finished epoch to a JSON-lines journal that survives a kill, and reports it."""

    def __init__(self, journal: Path, total_epochs: int, on_epoch: EpochHook | None):
        super().__init__()
        self.journal, self.total_epochs, self.on_epoch = journal, total_epochs, on_epoch
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {k: float(v) for k, v in (logs or {}).items()} | {
            "epoch": epoch + 1,
            "seconds": time.perf_counter() - self._started,
        }
        with open(self.journal, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_epoch:
            self.on_epoch(epoch + 1, self.total_epochs, record)


def fit_keras(
    settings: TrainSettings, features_dir: Path, callbacks: list[keras.callbacks.Callback], verbose: int | str = "auto"
) -> keras.Model:
    """The classic `model.fit` loop; the test split is passed as validation data for monitoring only
    (curves in the report). No early stopping or model selection uses it."""
    from tasks.models import make_model, make_optimizer

    x_train, y_train = load_split(features_dir, "train", "x"), load_split(features_dir, "train", "y")
    x_test, y_test = load_split(features_dir, "test", "x"), load_split(features_dir, "test", "y")
    model = make_model(settings.model, x_train.shape[1:], y_train.shape[1])
    model.compile(
        optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        np.asarray(x_train),
        np.asarray(y_train),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        validation_data=(np.asarray(x_test), np.asarray(y_test)),
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    return model


def _fit_airbench(*args, **kwargs) -> keras.Model:
    from tasks.airbench import fit_airbench  # the fast presets' recipe, loaded only when used

    return fit_airbench(*args, **kwargs)


TRAINERS: dict[str, Callable[..., keras.Model]] = {"keras_fit": fit_keras, "airbench": _fit_airbench}
