"""Training callbacks: the epoch journal, the divergence guard, and a checkpoint that survives SIGKILL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_path
from cifarflow.models.presets import Preset
from cifarflow.training.run import EpochHook


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self, journal: Path, total_epochs: int, on_epoch: EpochHook | None):
        super().__init__()
        self.journal, self.total_epochs, self.on_epoch = journal, total_epochs, on_epoch
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        record = {k: float(v) for k, v in logs.items()} | {"epoch": epoch + 1, "seconds": seconds}
        with open(self.journal, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_epoch:
            self.on_epoch(epoch + 1, self.total_epochs, record)


class TrainingDiverged(PipelineInputError):
    """The loss became NaN/inf or exploded: a property of the configuration, so never retried."""


class DivergenceGuard(keras.callbacks.Callback):
    """`TrainingDiverged` when a batch's loss is not finite or an epoch's exceeds `explode_factor` × the first."""

    def __init__(self, learning_rate: float, explode_factor: float = 1e4):
        super().__init__()
        self.learning_rate, self.explode_factor = learning_rate, explode_factor
        self._first_loss, self._epoch = 0.0, 0

    def _diverged(self, loss: float, why: str) -> None:
        raise TrainingDiverged(
            f"training diverged in epoch {self._epoch + 1}: {why} (loss {loss:.4g}) at learning rate "
            f"{self.learning_rate:g}; lower the learning rate or raise the batch size"
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            self._diverged(loss, "loss is not finite")
        self._first_loss = self._first_loss or loss

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        if self._first_loss and loss > self.explode_factor * self._first_loss:
            self._diverged(loss, f"loss exploded to over {self.explode_factor:g}× its first-batch value")


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose checkpoint survives SIGKILL at any instant (Keras' own writes in place)."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False, double_checkpoint=False)
        self._metadata = Path(backup_dir) / "checkpoint.json"

    def _save_model(self):
        directory = Path(self.backup_dir)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / f"epoch-{self._current_epoch:05d}.weights.h5"
        partial = directory / f".partial-{self._current_epoch:05d}.weights.h5"  # h5py wants the suffix
        self.model.save_weights(str(partial), overwrite=True)
        os.replace(partial, weights)
        with atomic_path(self._metadata) as tmp:
            tmp.write_text(json.dumps({"epoch": self._current_epoch, "weights": weights.name}))
        for old in directory.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)

    def _load_model(self):
        if not self._metadata.is_file():
            return
        checkpoint = json.loads(self._metadata.read_text())
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(Path(self.backup_dir) / checkpoint["weights"]))
        self.model._initial_epoch = checkpoint["epoch"]


class WarmStart(keras.callbacks.Callback):
    """Start from the champion's weights when every weight has the same shape (`applied`, `reason`)."""

    def __init__(self, model_path: str, preset: Preset):
        super().__init__()
        self.model_path, self.preset = model_path, preset
        self.applied, self.reason = False, "not started"

    def on_train_begin(self, logs=None):
        net = getattr(self.model, "net", self.model)  # airbench trains a wrapper around its network
        source = self.preset.load(self.model_path)
        ours, theirs = net.get_weights(), source.get_weights()
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
            self.reason = "the champion's architecture differs (weight shapes do not match)"
            return
        net.set_weights(theirs)
        self.applied, self.reason = True, "weights loaded"
