"""The airbench presets' training loop after airbench94_muon (Keller Jordan, github.com/KellerJordan/cifar10-airbench;
94.0% in 8 epochs). Randomness is keyed on (seed, step), so a resumed run trains exactly as an unbroken one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cifarflow.data.transform import Normalization, load_split, read_features
from cifarflow.models.precision import choose_policy, configure_threads, dtype_policy
from cifarflow.models.presets import AirbenchRecipe
from cifarflow.training import augment, muon
from cifarflow.training.run import TrainSettings


def linear_decay(step: tf.Tensor, total: int) -> tf.Tensor:
    """1 → 0 linearly over `total` steps (airbench94_muon's schedule), never negative."""
    return tf.maximum(0.0, 1.0 - tf.cast(step, tf.float32) / float(total))


class AirbenchTrainer(keras.Model):
    """The network wrapped for `fit` with airbench's train step (Muon buffers as weights, so checkpointed)."""

    def __init__(
        self,
        net: keras.Model,
        recipe: AirbenchRecipe,
        muon_lr: float,
        steps_per_epoch: int,
        total_steps: int,
        seed: int,
        batch_size: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.net, self.recipe, self.muon_lr = net, recipe, muon_lr
        self.steps_per_epoch, self.total_steps, self.seed_value = steps_per_epoch, total_steps, seed
        micro_batch = max(1, recipe.micro_batch_pixels // int(net.input_shape[1]) ** 2)
        self.micro_batches = max(1, math.ceil(batch_size / micro_batch))
        self.micro_size = math.ceil(batch_size / self.micro_batches)
        self.wd_over_lr = recipe.weight_decay * batch_size / recipe.bias_lr
        self.muon_buffers = [
            self.add_weight(shape=v.shape, initializer="zeros", trainable=False, name=f"muon_{i}")
            for i, v in enumerate(self.muon_kernels)
        ]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=False):
        return self.net(inputs, training=training)

    # Properties, not attributes: Keras would track the network's variables twice.
    @property
    def muon_kernels(self) -> list:
        """The conv kernels Muon trains (the frozen whitening kernel is not trainable)."""
        return [v for v in self.net.trainable_variables if len(v.shape) == 4]

    @property
    def sgd_variables(self) -> list:
        muon_ids = {id(v) for v in self.muon_kernels}
        return [v for v in self.net.trainable_variables if id(v) not in muon_ids]

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _gradient_scales(self) -> list[float]:
        head = id(self.net.get_layer("head").kernel)
        scale = self.recipe.head_lr / self.recipe.bias_lr
        return [scale if id(v) == head else 1.0 for v in self.sgd_variables]

    def _whiten_bias_gate(self, step: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
        """The whitening bias's update multiplier: its lr decays to zero over its first epochs, then it freezes."""
        live = tf.cast(epoch < self.recipe.whiten_bias_epochs, tf.float32)
        bias_steps = self.recipe.whiten_bias_epochs * self.steps_per_epoch
        own = linear_decay(step, bias_steps) / tf.maximum(linear_decay(step, self.total_steps), 1e-6)
        return live * own

    def _gradients(self, images, labels, variables):
        """Summed-loss gradients, per-example losses and logits, a micro-batch at a time (bounds memory)."""
        total, losses, all_logits = None, [], []
        for i in range(self.micro_batches):
            part = slice(i * self.micro_size, (i + 1) * self.micro_size)
            # one micro-batch at a time: else the graph may run two at once, holding both sets of activations
            with tf.control_dependencies(total or []):
                inputs = tf.identity(images[part])
            with tf.GradientTape() as tape:
                logits = tf.cast(self.net(inputs, training=True), tf.float32)
                targets = tf.one_hot(labels[part], tf.shape(logits)[-1])
                per_example = keras.losses.categorical_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=self.recipe.label_smoothing
                )
                loss = tf.reduce_sum(per_example)
            gradients = tape.gradient(loss, variables)
            total = gradients if total is None else [a + b for a, b in zip(total, gradients)]
            losses.append(per_example)
            all_logits.append(logits)
        return total, tf.concat(losses, 0), tf.concat(all_logits, 0)

    def train_step(self, data):
        (images, base_flip), labels = data
        recipe = self.recipe
        step = tf.cast(self.optimizer.iterations, tf.int64)
        epoch = step // self.steps_per_epoch
        flip = augment.alternating_flip_mask(base_flip, epoch)
        seed = tf.stack([tf.constant(self.seed_value, tf.int64), step])
        images = augment.flip_and_translate(images, seed, pad=recipe.translate, flip_mask=flip)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        variables = self.net.trainable_variables
        gradients, per_example, logits = self._gradients(images, labels, variables)
        by_id = {id(v): g for v, g in zip(variables, gradients)}
        updates = []
        for variable, scale in zip(self.sgd_variables, self._gradient_scales()):
            update = by_id[id(variable)] * scale + self.wd_over_lr * variable  # coupled L2, as torch SGD
            if variable is self.net.get_layer("whiten").bias:
                update = update * self._whiten_bias_gate(step, epoch)
            updates.append((update, variable))
        self.optimizer.apply_gradients(updates)  # advances optimizer.iterations
        lr = self.muon_lr * linear_decay(step, self.total_steps)
        for kernel, buffer in zip(self.muon_kernels, self.muon_buffers):
            muon.muon_step(kernel, buffer, by_id[id(kernel)], lr, recipe.muon_momentum)
        self.loss_tracker.update_state(tf.reduce_mean(per_example), sample_weight=tf.shape(labels)[0])
        self.accuracy_tracker.update_state(labels, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}


def train_dataset(
    pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epoch: tf.Variable
) -> tf.data.Dataset:
    """One epoch of full batches ((uint8 pixels, per-image flip bit), label), permuted by (seed, `epoch`)."""
    count = len(pixels)
    steps = count // batch_size
    rng = np.random.default_rng(seed)
    base_flip = tf.constant((rng.random(count) < 0.5).astype(np.uint8))
    pixels, labels = tf.constant(pixels), tf.constant(labels)

    def batches_of_indices(_):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), epoch.read_value()])
        )
        return tf.reshape(order[: steps * batch_size], [steps, batch_size])

    def gather(indices):
        return (tf.gather(pixels, indices), tf.gather(base_flip, indices)), tf.gather(labels, indices)

    # one private thread, no autotuning: on two cores tf.data's pool competed with the step (24 s or 41 s an epoch)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    return (
        tf.data.Dataset.from_tensors(0).map(batches_of_indices).unbatch().map(gather).prefetch(2).with_options(options)
    )


def fit_airbench(
    settings: TrainSettings, features_dir: Path, callbacks: list[keras.callbacks.Callback], verbose: int | str = "auto"
) -> keras.Model:
    """The network (logits, one per class of the features) trained on the features' train split."""
    pixels = np.ascontiguousarray(load_split(features_dir, "train", "pixels"))
    labels = np.ascontiguousarray(load_split(features_dir, "train", "labels")).astype(np.int32)
    features = read_features(features_dir)
    classes = len(features.label_names)
    return fit_arrays(settings, pixels, labels, features.normalization, callbacks, verbose, num_classes=classes)


def fit_arrays(
    settings: TrainSettings,
    pixels: np.ndarray,
    labels: np.ndarray,
    normalization: Normalization,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = 0,
    *,
    num_classes: int,
    mixed_precision: bool | None = None,
    recipe: AirbenchRecipe | None = None,
) -> keras.Model:
    """`fit_airbench` on in-memory uint8 pixels (N, S, S, 3) and integer labels (N,) in 0..num_classes − 1: the
    trained net, in float32 whatever precision trained it (see `in_float32`)."""
    configure_threads()
    with dtype_policy(choose_policy(mixed_precision)):
        trainer, dataset = make_trainer(settings, pixels, labels, normalization, recipe, num_classes=num_classes)
        trainer.fit(
            dataset, epochs=settings.epochs, callbacks=[trainer.epoch_feed, *callbacks], verbose=verbose, shuffle=False
        )
    return in_float32(trainer.net)


def in_float32(net: keras.Model) -> keras.Model:
    """`net` with float32 computation and the same (float32) weights. bfloat16 speeds training on CPUs that have it;
    the model that is scored, exported and served computes in float32, so it answers alike on every CPU and in ONNX
    (onnxruntime has no bfloat16 convolution) and evaluation's probabilities are the export's."""
    if all(layer.dtype_policy.name == "float32" for layer in net.layers):
        return net
    copy = keras.models.clone_model(net, clone_function=lambda layer: layer.from_config(float32_config(layer)))
    copy.set_weights(net.get_weights())
    return copy


def float32_config(layer: keras.layers.Layer) -> dict:
    return layer.get_config() | {"dtype": "float32"}


def make_trainer(
    settings: TrainSettings,
    pixels: np.ndarray,
    labels: np.ndarray,
    normalization: Normalization,
    recipe: AirbenchRecipe | None = None,
    *,
    num_classes: int,
) -> tuple[AirbenchTrainer, tf.data.Dataset]:
    """The compiled, built trainer of uint8 (N, S, S, 3) `pixels` and its dataset; `settings.learning_rate` is
    Muon's lr."""
    recipe = recipe or settings.preset.recipe
    batch_size = min(settings.batch_size, len(pixels))
    steps_per_epoch = len(pixels) // batch_size
    total_steps = steps_per_epoch * settings.epochs
    side = pixels.shape[1]
    net = settings.preset.build(normalization, recipe, num_classes=num_classes, image_size=side, seed=settings.seed)
    whitening_images = pixels[: max(1, recipe.whiten_pixels // side**2)]
    net.get_layer("whiten").set_whitening(normalization.apply(whitening_images), eps=recipe.whiten_eps)
    trainer = AirbenchTrainer(
        net, recipe, settings.learning_rate, steps_per_epoch, total_steps, settings.seed, batch_size
    )
    schedule = keras.optimizers.schedules.PolynomialDecay(recipe.bias_lr, total_steps, end_learning_rate=0.0)
    sgd = keras.optimizers.SGD(learning_rate=schedule, momentum=recipe.momentum, nesterov=True)
    trainer.compile(optimizer=sgd)
    trainer(np.zeros((1, *pixels.shape[1:]), np.uint8))  # builds the wrapper (BackupAndRestore needs it)
    trainer.optimizer.build(trainer.sgd_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # the shuffle's: its order is a function of (seed, epoch)
    # a callback, not a weight: Keras neither tracks nor saves it
    trainer.epoch_feed = keras.callbacks.LambdaCallback(on_epoch_begin=lambda number, logs: epoch.assign(number))
    return trainer, train_dataset(pixels, labels, batch_size, settings.seed, epoch)
