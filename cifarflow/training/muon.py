"""Muon for conv kernels (Keller Jordan, airbench94_muon): the Nesterov update orthogonalized (Newton–Schulz)."""

from __future__ import annotations

import tensorflow as tf

# airbench94_muon's quintic coefficients: three steps give singular values in about [0.5, 1.5], which trains as well
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: tf.Tensor, steps: int = 3, eps: float = 1e-7) -> tf.Tensor:
    """Approximately orthogonalize a 2-D `matrix` (U S Vᵀ → U S' Vᵀ with S' ≈ 1), in float32."""
    a, b, c = NS_COEFFICIENTS
    x = tf.cast(matrix, tf.float32)
    x = x / (tf.norm(x) + eps)  # top singular value ≤ 1
    wide = matrix.shape[0] <= matrix.shape[1]
    if not wide:
        x = tf.transpose(x)
    for _ in range(steps):
        gram = tf.matmul(x, x, transpose_b=True)
        x = a * x + tf.matmul(b * gram + c * tf.matmul(gram, gram), x)
    return x if wide else tf.transpose(x)


def orthogonal_update(kernel_gradient: tf.Tensor, steps: int = 3) -> tf.Tensor:
    """Newton–Schulz on a conv kernel (kh, kw, in, out) seen as an (out, kh·kw·in) matrix, as PyTorch's."""
    shape = tf.shape(kernel_gradient)
    matrix = tf.transpose(tf.reshape(kernel_gradient, [-1, kernel_gradient.shape[-1]]))
    return tf.reshape(tf.transpose(newton_schulz(matrix, steps)), shape)


def muon_step(kernel, buffer, gradient: tf.Tensor, lr: tf.Tensor, momentum: float) -> None:
    """One step on the variable `kernel`, first rescaled to Frobenius norm √out, with its momentum `buffer`."""
    gradient = tf.cast(gradient, tf.float32)
    buffer.assign(momentum * buffer + gradient)
    nesterov = gradient + momentum * buffer
    out_channels = float(kernel.shape[-1])
    rescaled = kernel * (out_channels**0.5 / (tf.norm(kernel) + 1e-12))
    kernel.assign(rescaled - lr * orthogonal_update(nesterov))  # one write of the kernel per step
