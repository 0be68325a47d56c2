"""airbench94's network (Keller Jordan, github.com/KellerJordan/cifar10-airbench) in Keras 3: normalization → frozen
2×2 patch whitening → GELU → three conv blocks of `recipe.widths` → maxpool → bias-free linear head → scale."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from cifarflow.data.transform import Normalization
from cifarflow.models.inputs import normalized_input
from cifarflow.models.presets import AirbenchRecipe


@keras.saving.register_keras_serializable(package="cifar")
class DiracInit(keras.initializers.Initializer):
    """PyTorch's default conv init (uniform ±1/√fan_in), the first `in` of (kh, kw, in, out) filters the identity."""

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
    """A frozen k×k conv of ± the whitened eigenvectors of training patches (`set_whitening`); only the bias trains."""

    def __init__(self, kernel_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.filters = 2 * channels * self.kernel_size**2
        shape = (self.kernel_size, self.kernel_size, channels, self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer="zeros", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=True)

    def call(self, inputs):
        kernel = keras.ops.cast(self.kernel, inputs.dtype)
        out = keras.ops.conv(inputs, kernel, strides=1, padding="valid")
        return out + keras.ops.cast(self.bias, out.dtype)

    def set_whitening(self, images: np.ndarray, eps: float = 5e-4) -> None:
        """Whitening weights from normalized float images (N, H, W, C), as airbench's `init_whitening_conv`."""
        self.kernel.assign(whitening_kernel(images, self.kernel_size, eps))

    def get_config(self):
        return super().get_config() | {"kernel_size": self.kernel_size}


def whitening_kernel(images: np.ndarray, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """(k, k, C, 2·k²·C): the uncentered patch covariance's eigenvectors / √(λ+eps), largest first, then negated."""
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


def make_airbench_net(
    normalization: Normalization,
    recipe: AirbenchRecipe | None = None,
    *,
    num_classes: int,
    image_size: int,
    seed: int | None = None,
) -> keras.Model:
    """(N, image_size, image_size, 3) uint8 pixels → (N, num_classes) float32 logits, uncompiled; the whitening
    weights are zero until `set_whitening`. image_size ≥ 16: three halvings leave a map of at least 1×1."""
    recipe = recipe or AirbenchRecipe()
    widths = recipe.widths
    inputs, x = normalized_input(normalization, image_size)
    # float32 always: the filters reach ~1/√eps ≈ 45, and bfloat16 would bury high-frequency channels in rounding
    x = PatchWhitening(2, name="whiten", dtype="float32")(x)
    x = layers.Activation("gelu", name="whiten_gelu", dtype="float32")(x)
    for block, width in enumerate(widths, start=1):
        x = _conv(width, f"block{block}_conv1", None if seed is None else seed + 2 * block)(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = _batch_norm(f"block{block}_norm1", recipe.bn_momentum)(x)
        x = layers.Activation("gelu", name=f"block{block}_gelu1")(x)
        x = _conv(width, f"block{block}_conv2", None if seed is None else seed + 2 * block + 1)(x)
        x = _batch_norm(f"block{block}_norm2", recipe.bn_momentum)(x)
        x = layers.Activation("gelu", name=f"block{block}_gelu2")(x)
    # the last map (k×k: 3×3 from airbench's 32 px, 7×7 from 64 px) pooled whole to 1×1, as airbench's MaxPool(3)
    x = layers.MaxPooling2D(int(x.shape[1]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    fan_in = int(widths[-1])
    # PyTorch's Linear init (uniform ±1/√fan_in), or the same rescaled to unit std (airbench94_muon)
    bound = math.sqrt(3.0) if recipe.head_unit_std else 1 / math.sqrt(fan_in)
    head_init = keras.initializers.RandomUniform(-bound, bound, seed=seed)
    x = layers.Dense(num_classes, use_bias=False, name="head", kernel_initializer=head_init)(x)
    x = layers.Rescaling(1 / fan_in if recipe.scaling_factor is None else recipe.scaling_factor, name="scale")(x)
    outputs = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="airbench")
