"""Training recipes of the airbench presets (`fast`, `quick`): the train step, optimizers, schedules,
lookahead, and the tf.data input pipeline. The network and TTA live in `tasks/airbench.py`.

Two recipes from Keller Jordan's airbench (https://github.com/KellerJordan/cifar10-airbench):

* **muon** (airbench94_muon, the presets' default): conv kernels by Muon (`tasks/muon.py`: Nesterov
  momentum 0.6, the update orthogonalized by Newton–Schulz, kernels held at norm √out, lr 0.24);
  whitening bias, BatchNorm biases (lr 0.053) and head (lr 0.67) by Nesterov SGD (momentum 0.85,
  weight decay 2e-6 per example); every lr decays linearly to zero; summed label-smoothed (0.2)
  cross-entropy; batch 2000 (summed over micro-batches of 1000 to bound memory); logits = head / width
  from a unit-std head init. 94.0% in 8 epochs on the official data (25% fewer than the SGD recipe).
* **sgd** (airbench94): Nesterov SGD, momentum 0.85, hyper-parameters in airbench's *decoupled* form
  (lr and weight decay per 1024 examples), coupled L2 weight decay, BatchNorm biases at 64× the lr, a
  triangular schedule (0.2 → 1 at 23% → 0.07), and lookahead: every 5 steps from epoch 3 an EMA of all
  weights (decay 0.95⁵·progress³) is copied back into the network, and once more at each epoch's end.

Shared: the whitening bias trains for the first 3 epochs only; uint8 pixels held once in memory,
shuffled/batched/prefetched by tf.data and normalized inside the model; alternating flip + random
2-pixel reflect translation done on whole batches in the train step (stateless RNG keyed on the step,
so a resumed run augments exactly as an unbroken one). Mixed precision per `choose_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tasks import augment, muon
from tasks.airbench import (
    CIFAR_MEAN,
    CIFAR_STD,
    FAST_WIDTHS,
    QUICK_WIDTHS,
    choose_policy,
    configure_threads,
    dtype_policy,
    make_fast_model,
    make_quick_model,
)


@dataclass(frozen=True)
class Hyper:
    """One airbench recipe; `optimizer` ("muon" or "sgd") picks the family (see the module docstring).
    `lr` is the Muon lr of the conv kernels, or airbench94's decoupled SGD lr (per 1024 examples)."""

    widths: tuple[int, int, int] = FAST_WIDTHS
    optimizer: str = "muon"
    lr: float = 0.24
    momentum: float = 0.85  # Nesterov SGD's
    weight_decay: float = 2e-6  # muon: per example; sgd: per 1024 examples, decoupled
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    whiten_eps: float = 5e-4  # added to the patch covariance's eigenvalues: caps the whitening gain
    translate: int = 2
    bn_momentum: float = 0.6
    scaling_factor: float | None = None  # logits × this; None: 1 / the last width
    head_unit_std: bool = True  # head init rescaled to unit std (muon), else PyTorch's default (sgd)
    micro_batch: int = 1000  # a step sums the gradients of micro-batches this large: its memory bound
    # muon only
    muon_momentum: float = 0.6
    bias_lr: float = 0.053
    head_lr: float = 0.67
    # sgd only
    bias_scaler: float = 64.0
    schedule: tuple[float, float, float] = (0.2, 0.23, 0.07)  # start, peak position, end
    lookahead: bool = False
    ema_start_epochs: int = 3
    ema_decay_base: float = 0.95
    ema_decay_pow: float = 3.0
    ema_every: int = 5


# airbench94 as published (SGD + lookahead; 94.0% in 9.9 epochs of batch 1024), kept for comparison.
AIRBENCH94_SGD = Hyper(
    optimizer="sgd",
    lr=11.5,
    weight_decay=0.0153,
    scaling_factor=1 / 9,
    head_unit_std=False,
    micro_batch=1024,
    lookahead=True,
)
HYPERS: dict[str, Hyper] = {"fast": Hyper(), "quick": Hyper(widths=QUICK_WIDTHS)}


def triangle(step: tf.Tensor, total: int, start: float, peak: float, end: float) -> tf.Tensor:
    """airbench's piecewise-linear schedule multiplier: start → 1 at peak·total → end at total."""
    step = tf.cast(step, tf.float32)
    peak_step = float(max(1, int(peak * total)))
    up = start + (1.0 - start) * step / peak_step
    down = 1.0 + (end - 1.0) * (step - peak_step) / max(1.0, total - peak_step)
    return tf.where(step < peak_step, up, down)


def linear_decay(step: tf.Tensor, total: int) -> tf.Tensor:
    """1 → 0 linearly over `total` steps (airbench94_muon's schedule), never negative."""
    return tf.maximum(0.0, 1.0 - tf.cast(step, tf.float32) / float(total))


@keras.saving.register_keras_serializable(package="cifar")
class TriangleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, base: float, total_steps: int, start: float, peak: float, end: float):
        self.base, self.total_steps, self.start, self.peak, self.end = base, total_steps, start, peak, end

    def __call__(self, step):
        return self.base * triangle(step, self.total_steps, self.start, self.peak, self.end)

    def get_config(self):
        return {
            "base": self.base,
            "total_steps": self.total_steps,
            "start": self.start,
            "peak": self.peak,
            "end": self.end,
        }


@keras.saving.register_keras_serializable(package="cifar")
class LinearDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, base: float, total_steps: int):
        self.base, self.total_steps = base, total_steps

    def __call__(self, step):
        return self.base * linear_decay(step, self.total_steps)

    def get_config(self):
        return {"base": self.base, "total_steps": self.total_steps}


class AirbenchTrainer(keras.Model):
    """Wraps the network for `fit`: a custom train step (augmentation, micro-batched gradients, Muon
    and/or SGD, lookahead). Its weights (network, Muon buffers, EMA) and the SGD optimizer's state are
    what `BackupAndRestore` checkpoints; `optimizer.iterations` is the step counter."""

    def __init__(
        self,
        net: keras.Model,
        hyper: Hyper,
        steps_per_epoch: int,
        total_steps: int,
        seed: int,
        batch_size: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.net, self.hyper = net, hyper
        self.steps_per_epoch, self.total_steps, self.seed_value = steps_per_epoch, total_steps, seed
        self.micro_batches = max(1, math.ceil(batch_size / hyper.micro_batch))
        self.micro_size = math.ceil(batch_size / self.micro_batches)
        if hyper.optimizer == "sgd":
            kilostep_scale = 1024 * (1 + 1 / (1 - hyper.momentum))
            self.base_lr = hyper.lr / kilostep_scale  # for the *summed* loss, as PyTorch airbench
            self.wd_over_lr = hyper.weight_decay * batch_size / kilostep_scale / self.base_lr
        elif hyper.optimizer == "muon":
            self.base_lr = hyper.bias_lr
            self.wd_over_lr = hyper.weight_decay * batch_size / hyper.bias_lr
        else:
            raise ValueError(f"unknown optimizer {hyper.optimizer!r}; choose 'muon' or 'sgd'")
        self.muon_buffers = [
            self.add_weight(shape=v.shape, initializer="zeros", trainable=False, name=f"muon_{i}")
            for i, v in enumerate(self.muon_kernels)
        ]
        # EMA over every float state of the network (BN statistics included), as airbench
        self.ema = [
            self.add_weight(shape=v.shape, initializer="zeros", trainable=False, name=f"ema_{i}")
            for i, v in enumerate(net.weights if hyper.lookahead else [])
        ]
        self.ema_started = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ema_started")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    # Properties, not attributes: Keras would track the network's variables twice.
    @property
    def tracked(self) -> list:
        return self.net.weights

    @property
    def muon_kernels(self) -> list:
        """The conv kernels Muon trains (the frozen whitening kernel is not trainable)."""
        if self.hyper.optimizer != "muon":
            return []
        return [v for v in self.net.trainable_variables if len(v.shape) == 4]

    @property
    def sgd_variables(self) -> list:
        muon_ids = {id(v) for v in self.muon_kernels}
        return [v for v in self.net.trainable_variables if id(v) not in muon_ids]

    @property
    def whiten_bias(self):
        return self.net.get_layer("whiten").bias

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def schedule(self) -> keras.optimizers.schedules.LearningRateSchedule:
        if self.hyper.optimizer == "sgd":
            return TriangleSchedule(self.base_lr, self.total_steps, *self.hyper.schedule)
        return LinearDecaySchedule(self.base_lr, self.total_steps)

    def _gradient_scales(self) -> list[float]:
        """Per-variable lr multipliers of the SGD variables relative to the optimizer's lr."""
        hyper = self.hyper
        if hyper.optimizer == "sgd":
            special = {id(layer.beta) for layer in self.net.layers if isinstance(layer, layers.BatchNormalization)}
            scale = hyper.bias_scaler
        else:
            special = {id(self.net.get_layer("head").kernel)}
            scale = hyper.head_lr / hyper.bias_lr
        return [scale if id(v) in special else 1.0 for v in self.sgd_variables]

    def _whiten_bias_gate(self, step: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
        """Multiplier of the whitening bias's update: it trains for the first epochs, then freezes. Under
        muon its lr decays to zero over those epochs instead of over the run."""
        live = tf.cast(epoch < self.hyper.whiten_bias_epochs, tf.float32)
        if self.hyper.optimizer == "sgd":
            return live
        bias_steps = self.hyper.whiten_bias_epochs * self.steps_per_epoch
        own = linear_decay(step, bias_steps) / tf.maximum(linear_decay(step, self.total_steps), 1e-6)
        return live * own

    def _gradients(self, images, labels, variables):
        """Summed-loss gradients over the batch, computed a micro-batch at a time (the activations of
        one micro-batch are alive at once; BatchNorm normalizes per micro-batch)."""
        total, losses, all_logits = None, [], []
        for i in range(self.micro_batches):
            part = slice(i * self.micro_size, (i + 1) * self.micro_size)
            # the next micro-batch starts once the previous one's gradients exist (else the graph may
            # run both at once and hold both sets of activations)
            with tf.control_dependencies(total or []):
                inputs = tf.identity(images[part])
            with tf.GradientTape() as tape:
                logits = tf.cast(self.net(inputs, training=True), tf.float32)
                targets = tf.one_hot(labels[part], tf.shape(logits)[-1])
                per_example = keras.losses.categorical_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=self.hyper.label_smoothing
                )
                loss = tf.reduce_sum(per_example)
            gradients = tape.gradient(loss, variables)
            total = gradients if total is None else [a + b for a, b in zip(total, gradients)]
            losses.append(per_example)
            all_logits.append(logits)
        return total, tf.concat(losses, 0), tf.concat(all_logits, 0)

    def train_step(self, data):
        (images, base_flip), labels = data
        hyper = self.hyper
        step = tf.cast(self.optimizer.iterations, tf.int64)
        epoch = step // self.steps_per_epoch
        flip = augment.alternating_flip_mask(base_flip, epoch)
        seed = tf.stack([tf.constant(self.seed_value, tf.int64), step])
        images = augment.flip_and_translate(images, seed, pad=hyper.translate, flip_mask=flip)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        variables = self.net.trainable_variables
        gradients, per_example, logits = self._gradients(images, labels, variables)
        by_id = {id(v): g for v, g in zip(variables, gradients)}
        updates = []
        for variable, scale in zip(self.sgd_variables, self._gradient_scales()):
            update = by_id[id(variable)] * scale + self.wd_over_lr * variable  # coupled L2, as torch SGD
            if variable is self.whiten_bias:
                update = update * self._whiten_bias_gate(step, epoch)
            updates.append((update, variable))
        self.optimizer.apply_gradients(updates)  # advances optimizer.iterations
        if self.muon_kernels:
            lr = hyper.lr * linear_decay(step, self.total_steps)
            for kernel, buffer in zip(self.muon_kernels, self.muon_buffers):
                muon.muon_step(kernel, buffer, by_id[id(kernel)], lr, hyper.muon_momentum)
        if hyper.lookahead:
            self._lookahead(step + 1, epoch)
        self.loss_tracker.update_state(tf.reduce_mean(per_example), sample_weight=tf.shape(labels)[0])
        self.accuracy_tracker.update_state(labels, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}

    def _lookahead(self, steps_done, epoch):
        hyper = self.hyper
        due = tf.logical_and(epoch >= hyper.ema_start_epochs, steps_done % hyper.ema_every == 0)
        started = self.ema_started > 0.5
        progress = tf.cast(steps_done, tf.float32) / float(self.total_steps)
        rho = (hyper.ema_decay_base**hyper.ema_every) * progress**hyper.ema_decay_pow
        update = tf.logical_and(due, started)
        alpha = tf.where(update, 1.0 - rho, tf.where(due, 1.0, 0.0))  # first due step: EMA := weights
        for ema, variable in zip(self.ema, self.tracked):
            ema.assign_add(alpha * (tf.cast(variable, tf.float32) - ema))
            variable.assign(tf.where(update, ema, variable))
        self.ema_started.assign(tf.where(due, 1.0, self.ema_started))

    def copy_back(self) -> None:
        """End of epoch: the network takes the EMA weights (airbench's `update(decay=1.0)`)."""
        if float(self.ema_started.numpy()) > 0.5:
            for ema, variable in zip(self.ema, self.tracked):
                variable.assign(ema)


class LookaheadCopyBack(keras.callbacks.Callback):
    """Runs before BackupAndRestore in the callback list so checkpoints hold the copied-back weights."""

    def on_epoch_end(self, epoch, logs=None):
        if self.model.hyper.lookahead:
            self.model.copy_back()


class EpochFeed(keras.callbacks.Callback):
    """Tells the input pipeline which epoch it is producing (set before each epoch's iterator starts),
    so the shuffle order is a function of (seed, epoch) and a resumed run sees the same batches."""

    def __init__(self):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def train_dataset(
    pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epoch: tf.Variable | None = None
) -> tf.data.Dataset:
    """One epoch of full batches ((uint8 pixels, per-image flip bit), label), as airbench drops the last
    partial batch. The arrays are held once in memory; each epoch gathers its batches by a permutation
    drawn from (seed, `epoch`), on a tf.data thread, prefetched ahead of the train step."""
    count = len(pixels)
    steps = count // batch_size
    rng = np.random.default_rng(seed)
    base_flip = tf.constant((rng.random(count) < 0.5).astype(np.uint8))
    pixels, labels = tf.constant(pixels), tf.constant(labels)
    epoch = epoch if epoch is not None else tf.Variable(0, dtype=tf.int64, trainable=False)

    def batches_of_indices(_):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), epoch.read_value()])
        )
        return tf.reshape(order[: steps * batch_size], [steps, batch_size])

    def gather(indices):
        return (tf.gather(pixels, indices), tf.gather(base_flip, indices)), tf.gather(labels, indices)

    # One private thread, no autotuning: gathering a batch takes about a millisecond, and on two cores
    # tf.data's shared pool and autotuner competed with the train step (`quick` epochs took 24 s or
    # 41 s at random; with this, 23-24 s every epoch).
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    return (
        tf.data.Dataset.from_tensors(0).map(batches_of_indices).unbatch().map(gather).prefetch(2).with_options(options)
    )


def hyper_for(settings) -> Hyper:
    return HYPERS.get(settings.model, Hyper())


def build_net(model: str, hyper: Hyper, seed: int | None = None) -> keras.Model:
    builder = make_quick_model if model == "quick" else make_fast_model
    return builder(
        widths=hyper.widths,
        bn_momentum=hyper.bn_momentum,
        scaling_factor=hyper.scaling_factor,
        head_unit_std=hyper.head_unit_std,
        seed=seed,
    )


def fit_airbench(
    settings,
    features_dir: Path,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str = "auto",
    *,
    mixed_precision: bool | None = None,
    hyper: Hyper | None = None,
    max_train_images: int | None = None,
) -> keras.Model:
    """Train `settings.model` ('fast' or 'quick') airbench-style; returns the bare network (logits).

    `callbacks` (BackupAndRestore, the epoch recorder) go to `model.fit`, after the lookahead copy-back.
    `max_train_images` trains on a prefix of the split (tests/benchmarks only)."""
    from tasks.preprocess import load_split

    pixels = np.ascontiguousarray(load_split(features_dir, "train", "pixels")[:max_train_images])
    labels = np.ascontiguousarray(load_split(features_dir, "train", "labels")[:max_train_images]).astype(np.int32)
    return fit_arrays(settings, pixels, labels, callbacks, verbose, mixed_precision=mixed_precision, hyper=hyper)


def fit_arrays(
    settings,
    pixels: np.ndarray,
    labels: np.ndarray,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    *,
    mixed_precision: bool | None = None,
    hyper: Hyper | None = None,
) -> keras.Model:
    """`fit_airbench` on in-memory uint8 pixels (N, 32, 32, 3) and integer labels (N,)."""
    configure_threads()
    with dtype_policy(choose_policy(mixed_precision)):
        trainer, dataset = make_trainer(settings, pixels, labels, hyper)
        trainer.fit(
            dataset,
            epochs=settings.epochs,
            callbacks=[trainer.epoch_feed, LookaheadCopyBack(), *callbacks],
            verbose=verbose,
            shuffle=False,
        )
    return trainer.net


def make_trainer(
    settings, pixels: np.ndarray, labels: np.ndarray, hyper: Hyper | None = None
) -> tuple[AirbenchTrainer, tf.data.Dataset]:
    """The compiled, built trainer (network whitened from `pixels`) and its training dataset, under the
    current dtype policy. `settings.learning_rate` is airbench's lr (per 1024 examples)."""
    hyper = replace(hyper or hyper_for(settings), lr=settings.learning_rate)
    batch_size = min(settings.batch_size, len(pixels))
    steps_per_epoch = len(pixels) // batch_size
    total_steps = steps_per_epoch * settings.epochs
    net = build_net(settings.model, hyper, seed=settings.seed)
    whiten_sample = pixels[:5000].astype(np.float32) / 255.0
    net.get_layer("whiten").set_whitening((whiten_sample - CIFAR_MEAN) / CIFAR_STD, eps=hyper.whiten_eps)
    trainer = AirbenchTrainer(net, hyper, steps_per_epoch, total_steps, settings.seed, batch_size)
    sgd = keras.optimizers.SGD(learning_rate=trainer.schedule(), momentum=hyper.momentum, nesterov=True)
    trainer.compile(optimizer=sgd)
    trainer(np.zeros((1, *pixels.shape[1:]), np.uint8))  # builds the wrapper (BackupAndRestore needs it)
    trainer.optimizer.build(trainer.sgd_variables)
    trainer.epoch_feed = EpochFeed()  # a callback, not a weight: Keras neither tracks nor saves it
    return trainer, train_dataset(pixels, labels, batch_size, settings.seed, trainer.epoch_feed.epoch)
