"""airbench94 (Keller Jordan, https://github.com/KellerJordan/cifar10-airbench) ported to Keras 3 / TF.

The `fast` and `quick` presets. What is ported, ingredient by ingredient:

* Network: a frozen 2×2 *patch-whitening* conv (weights from the eigen-decomposition of the
  training-patch second-moment matrix, ±eigenvectors → 24 channels; its bias trains for the first
  epochs only), GELU, three conv blocks (conv → maxpool 2 → BN → GELU → conv → BN → GELU) of widths
  64/256/256 (`fast`), a final maxpool over the 3×3 map, a bias-free linear head and logits × 1/9.
  Convs are bias-free and identity ("dirac") initialized on their first `in_channels` filters;
  BatchNorm has no scale, momentum 0.6, eps 1e-12.
* Optimizer: Nesterov SGD, momentum 0.85, hyper-parameters in airbench's *decoupled* form (lr and
  weight decay per 1024 examples), coupled L2 weight decay that flows through the momentum like
  PyTorch's SGD, BatchNorm biases at 64× the learning rate; summed label-smoothed (0.2) cross-entropy;
  a triangular schedule (0.2 → 1 at 23% of the steps → 0.07).
* Lookahead: every 5 steps from epoch 3 an EMA of all weights (decay 0.95⁵·(progress)³) is copied
  back into the network, and once more at each epoch's end.
* Data: uint8 pixels held once in memory, shuffled/batched/prefetched by tf.data, normalized inside
  the model; alternating flip + random 2-pixel reflect translation done on whole batches in the train
  step (stateless RNG keyed on the step, so a resumed run augments exactly as an unbroken one).
* Test-time augmentation: mirror + 1-pixel translations, 6 views, logits averaged (airbench level 2).
* Mixed precision: `mixed_bfloat16` when the CPU has native bf16 (avx512_bf16 / amx_bf16), else
  float32; `CIFAR_MIXED_PRECISION=0|1` or the `mixed_precision` argument overrides. The global Keras
  dtype policy is restored afterwards.

The saved model takes uint8 (or float 0..255) pixels and outputs *logits*; `predict_airbench`
turns them into TTA-averaged probabilities.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tasks import augment

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
FAST_WIDTHS = (64, 256, 256)
QUICK_WIDTHS = (32, 64, 128)
TTA_LEVEL = 2
TTA_DESCRIPTION = "mirror + ±1px translations, 6 views, logits averaged (airbench level 2)"


@dataclass(frozen=True)
class Hyper:
    """airbench94's hyper-parameters (decoupled form: lr and weight decay are per 1024 examples)."""

    widths: tuple[int, int, int] = FAST_WIDTHS
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    schedule: tuple[float, float, float] = (0.2, 0.23, 0.07)  # start, peak position, end
    ema_start_epochs: int = 3
    ema_decay_base: float = 0.95
    ema_decay_pow: float = 3.0
    ema_every: int = 5
    whiten_bias_epochs: int = 3
    translate: int = 2
    bn_momentum: float = 0.6
    scaling_factor: float = 1 / 9
    lookahead: bool = True


HYPERS: dict[str, Hyper] = {"fast": Hyper(), "quick": Hyper(widths=QUICK_WIDTHS)}


# --------------------------------------------------------------------------------------------------
# Layers and initializers
# --------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="cifar")
class DiracInit(keras.initializers.Initializer):
    """PyTorch's default conv init (uniform ±1/√fan_in) with the first `in_channels` filters set to
    the identity (airbench's implicit residual): a conv kernel of shape (kh, kw, in, out)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        bound = 1.0 / math.sqrt(kh * kw * cin)
        kernel = keras.random.uniform(shape, -bound, bound, dtype="float32", seed=self.seed)
        eye = np.zeros(shape, np.float32)
        n = min(cin, cout)
        eye[(kh - 1) // 2, (kw - 1) // 2, np.arange(n), np.arange(n)] = 1.0
        keep = np.ones(shape, np.float32)
        keep[:, :, :, :n] = 0.0
        return keras.ops.cast(kernel * keep + eye, dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="cifar")
class PatchWhitening(layers.Layer):
    """A frozen k×k conv whose 2·k²·C filters are ± the whitened eigenvectors of the training
    patches (set with `set_whitening`); only the bias is a trainable weight."""

    def __init__(self, kernel_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.filters = 2 * channels * self.kernel_size**2
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, self.filters),
            initializer="zeros",
            trainable=False,
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=True)

    def call(self, inputs):
        kernel = keras.ops.cast(self.kernel, inputs.dtype)
        out = keras.ops.conv(inputs, kernel, strides=1, padding="valid")
        return out + keras.ops.cast(self.bias, out.dtype)

    def compute_output_shape(self, input_shape):
        k = self.kernel_size - 1
        n, h, w, c = input_shape
        return (n, None if h is None else h - k, None if w is None else w - k, 2 * c * self.kernel_size**2)

    def set_whitening(self, images: np.ndarray, eps: float = 5e-4) -> None:
        """Whitening weights from normalized float images (N, H, W, C), as airbench's
        `init_whitening_conv`: eigen-decomposition of the (uncentered) patch covariance."""
        self.kernel.assign(whitening_kernel(images, self.kernel_size, eps))

    def get_config(self):
        return super().get_config() | {"kernel_size": self.kernel_size}


def whitening_kernel(images: np.ndarray, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """(k, k, C, 2·k²·C) kernel: eigenvectors of the patch covariance scaled by 1/√(λ+eps), largest
    eigenvalue first, then their negatives."""
    images = np.asarray(images, np.float64)
    n, h, w, c = images.shape
    k = kernel_size
    patches = np.stack([images[:, i : h - k + 1 + i, j : w - k + 1 + j, :] for i in range(k) for j in range(k)], axis=3)
    flat = patches.reshape(-1, k * k * c)  # each row: a patch in (row, col, channel) order
    covariance = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)  # columns: filters
    kernel = scaled.reshape(k, k, c, k * k * c)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def _batch_norm(name: str, momentum: float) -> layers.Layer:
    return layers.BatchNormalization(momentum=momentum, epsilon=1e-12, scale=False, center=True, name=name)


def _conv(width: int, name: str, seed: int | None) -> layers.Layer:
    return layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=DiracInit(seed), name=name)


def make_fast_model(
    input_shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    widths: Sequence[int] = FAST_WIDTHS,
    *,
    bn_momentum: float = 0.6,
    scaling_factor: float = 1 / 9,
    seed: int | None = None,
    name: str = "fast",
) -> keras.Model:
    """The airbench94 network (uncompiled; whitening weights are zero until `set_whitening`). Takes
    pixels 0..255 (uint8 or float), normalizes them itself, outputs float32 logits."""
    inputs = keras.Input(shape=input_shape, name="pixels", dtype="uint8")
    x = layers.Rescaling(
        scale=(1.0 / (255.0 * CIFAR_STD)).tolist(), offset=(-CIFAR_MEAN / CIFAR_STD).tolist(), name="normalize"
    )(inputs)
    x = PatchWhitening(2, name="whiten")(x)
    x = layers.Activation("gelu", name="whiten_gelu")(x)
    for block, width in enumerate(widths, start=1):
        x = _conv(width, f"block{block}_conv1", None if seed is None else seed + 2 * block)(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = _batch_norm(f"block{block}_norm1", bn_momentum)(x)
        x = layers.Activation("gelu", name=f"block{block}_gelu1")(x)
        x = _conv(width, f"block{block}_conv2", None if seed is None else seed + 2 * block + 1)(x)
        x = _batch_norm(f"block{block}_norm2", bn_momentum)(x)
        x = layers.Activation("gelu", name=f"block{block}_gelu2")(x)
    x = layers.MaxPooling2D(3, name="pool")(x)  # 3×3 map → 1×1, as airbench
    x = layers.Flatten(name="flatten")(x)
    fan_in = int(widths[-1])
    x = layers.Dense(
        num_classes,
        use_bias=False,
        name="head",
        kernel_initializer=keras.initializers.RandomUniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), seed=seed),
    )(x)
    x = layers.Rescaling(scaling_factor, name="scale")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def make_quick_model(
    input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10, widths: Sequence[int] = QUICK_WIDTHS, **kwargs
) -> keras.Model:
    return make_fast_model(input_shape, num_classes, widths, **kwargs | {"name": kwargs.get("name", "quick")})


# --------------------------------------------------------------------------------------------------
# Precision and threads
# --------------------------------------------------------------------------------------------------


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def choose_policy(mixed_precision: bool | None = None) -> str:
    """'mixed_bfloat16' or 'float32': the argument if given, else CIFAR_MIXED_PRECISION, else auto."""
    if mixed_precision is None:
        env = os.environ.get("CIFAR_MIXED_PRECISION", "").strip().lower()
        if env in ("0", "false", "no", "off"):
            mixed_precision = False
        elif env in ("1", "true", "yes", "on"):
            mixed_precision = True
        else:
            mixed_precision = cpu_has_bf16()
    return "mixed_bfloat16" if mixed_precision else "float32"


@contextmanager
def dtype_policy(name: str):
    """Set the global Keras dtype policy for the block, then restore the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def configure_threads() -> None:
    """One intra-op pool as wide as the cores we may use; inter-op 2 so tf.data and the step overlap.
    Only possible before TF's runtime starts; later calls are no-ops."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, cores))
    except RuntimeError:
        pass


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def triangle(step: tf.Tensor, total: int, start: float, peak: float, end: float) -> tf.Tensor:
    """airbench's piecewise-linear schedule multiplier: start → 1 at peak·total → end at total."""
    step = tf.cast(step, tf.float32)
    peak_step = float(max(1, int(peak * total)))
    up = start + (1.0 - start) * step / peak_step
    down = 1.0 + (end - 1.0) * (step - peak_step) / max(1.0, total - peak_step)
    return tf.where(step < peak_step, up, down)


class AirbenchTrainer(keras.Model):
    """Wraps the network for `fit`: a custom train step (augmentation, decoupled SGD, lookahead).
    Its weights (network + EMA + optimizer state) are what `BackupAndRestore` checkpoints."""

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
        kilostep_scale = 1024 * (1 + 1 / (1 - hyper.momentum))
        self.base_lr = hyper.lr / kilostep_scale  # for the *summed* loss, as PyTorch airbench
        self.wd_over_lr = hyper.weight_decay * batch_size / kilostep_scale / self.base_lr
        # EMA over every float state of the network (BN statistics included), as airbench
        self.ema = [
            self.add_weight(shape=v.shape, initializer="zeros", trainable=False, name=f"ema_{i}")
            for i, v in enumerate(net.weights)
        ]
        self.ema_started = self.add_weight(shape=(), initializer="zeros", trainable=False, name="ema_started")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    @property
    def tracked(self) -> list:
        return self.net.weights  # a property, not an attribute: Keras would track the variables twice

    @property
    def whiten_bias(self):
        return self.net.get_layer("whiten").bias

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _scales(self) -> list[float]:
        bias_ids = {id(layer.beta) for layer in self.net.layers if isinstance(layer, layers.BatchNormalization)}
        return [self.hyper.bias_scaler if id(v) in bias_ids else 1.0 for v in self.net.trainable_variables]

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
        with tf.GradientTape() as tape:
            logits = tf.cast(self.net(images, training=True), tf.float32)
            targets = tf.one_hot(labels, tf.shape(logits)[-1])
            per_example = keras.losses.categorical_crossentropy(
                targets, logits, from_logits=True, label_smoothing=hyper.label_smoothing
            )
            loss = tf.reduce_sum(per_example)
        gradients = tape.gradient(loss, variables)
        bias_live = tf.cast(epoch < hyper.whiten_bias_epochs, tf.float32)
        updates = []
        for gradient, variable, scale in zip(gradients, variables, self._scales()):
            update = gradient * scale + self.wd_over_lr * variable  # coupled L2, as torch SGD
            if variable is self.whiten_bias:  # trained for the first epochs, then frozen
                update = update * bias_live
            updates.append(update)
        self.optimizer.apply_gradients(zip(updates, variables))
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
    drawn from (seed, `epoch`), on tf.data threads, prefetched ahead of the train step."""
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

    return (
        tf.data.Dataset.from_tensors(0)
        .map(batches_of_indices)
        .unbatch()
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def hyper_for(settings) -> Hyper:
    return HYPERS.get(settings.model, Hyper())


def build_net(model: str, hyper: Hyper, seed: int | None = None) -> keras.Model:
    builder = make_quick_model if model == "quick" else make_fast_model
    return builder(widths=hyper.widths, bn_momentum=hyper.bn_momentum, scaling_factor=hyper.scaling_factor, seed=seed)


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
    net.get_layer("whiten").set_whitening((whiten_sample - CIFAR_MEAN) / CIFAR_STD)
    trainer = AirbenchTrainer(net, hyper, steps_per_epoch, total_steps, settings.seed, batch_size)
    schedule = TriangleSchedule(trainer.base_lr, total_steps, *hyper.schedule)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=hyper.momentum, nesterov=True))
    trainer(np.zeros((1, *pixels.shape[1:]), np.uint8))  # builds the wrapper (BackupAndRestore needs it)
    trainer.optimizer.build(trainer.net.trainable_variables)
    trainer.epoch_feed = EpochFeed()  # a callback, not a weight: Keras neither tracks nor saves it
    return trainer, train_dataset(pixels, labels, batch_size, settings.seed, trainer.epoch_feed.epoch)


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


# --------------------------------------------------------------------------------------------------
# Prediction with test-time augmentation
# --------------------------------------------------------------------------------------------------


def tta_logits(model: keras.Model, pixels: np.ndarray, level: int = TTA_LEVEL, batch_size: int = 1000) -> np.ndarray:
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


def predict_airbench(model: keras.Model, features_dir: Path, level: int = TTA_LEVEL) -> np.ndarray:
    """(N, 10) class probabilities on the test split: softmax of the TTA-averaged logits."""
    from tasks.preprocess import load_split

    configure_threads()
    pixels = load_split(features_dir, "test", "pixels")
    return softmax(tta_logits(model, pixels, level)).astype(np.float32)
