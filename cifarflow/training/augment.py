"""Batch augmentation in TensorFlow (airbench's): NHWC batches of any dtype; stateless, so a seed fixes it."""

from __future__ import annotations

import tensorflow as tf


def alternating_flip_mask(base_mask: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """airbench's alternating flip: `base_mask` on even epochs, its negation on odd ones."""
    odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
    return tf.math.logical_xor(tf.cast(base_mask, tf.bool), odd)


def translate(images: tf.Tensor, shifts: tf.Tensor, pad: int) -> tf.Tensor:
    """Crop each image at `shifts` (B, 2) in [-pad, pad] from its reflect-padded copy."""
    height = images.shape[1] or tf.shape(images)[1]
    width = images.shape[2] or tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    offsets = tf.cast(shifts, tf.int32) + pad  # (B, 2): the crop's top-left corner in `padded`
    rows = offsets[:, :1] + tf.range(height, dtype=tf.int32)[None, :]  # (B, height)
    cols = offsets[:, 1:] + tf.range(width, dtype=tf.int32)[None, :]  # (B, width)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, height, W+2p, C)
    return tf.gather(out, cols, axis=2, batch_dims=1)  # (B, height, width, C)


def flip_and_translate(images: tf.Tensor, seed, pad: int = 2, flip_mask: tf.Tensor | None = None) -> tf.Tensor:
    """airbench's flip + `batch_crop`: flip by `flip_mask` (else a random half), shift in [-pad, pad]², by `seed`."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if flip_mask is None:
        flip_mask = tf.random.stateless_uniform(tf.shape(images)[:1], seed=flip_seed) < 0.5
    images = tf.where(tf.reshape(tf.cast(flip_mask, tf.bool), [-1, 1, 1, 1]), tf.reverse(images, axis=[2]), images)
    if pad == 0:
        return images
    shape = tf.stack([tf.shape(images)[0], 2])
    shifts = tf.random.stateless_uniform(shape, seed=shift_seed, minval=-pad, maxval=pad + 1, dtype=tf.int32)
    return translate(images, shifts, pad)


def tta_views(level: int = 2) -> list[tuple[float, int, int, bool]]:
    """airbench's test-time augmentation as (weight, row shift, col shift, flipped) views, weights summing to 1:
    level 0 the image; 1 + its mirror; 2 + the 1-pixel translations up-left and down-right, mirrored too."""
    if level == 0:
        return [(1.0, 0, 0, False)]
    if level == 1:
        return [(0.5, 0, 0, False), (0.5, 0, 0, True)]
    if level == 2:
        return [(0.25, 0, 0, False), (0.25, 0, 0, True)] + [(0.125, s, s, f) for s in (-1, 1) for f in (False, True)]
    raise ValueError(f"tta level must be 0, 1 or 2, got {level}")


def make_view(images: tf.Tensor, row_shift: int, col_shift: int, flipped: bool) -> tf.Tensor:
    """One TTA view: the content moved (reflect padded; +1: down/right), then optionally mirrored."""
    if row_shift or col_shift:
        pad = max(abs(row_shift), abs(col_shift))
        batch = tf.shape(images)[0]
        # content moving down-right = crop starting up-left in the padded image
        shifts = tf.tile(tf.constant([[-row_shift, -col_shift]], tf.int32), tf.stack([batch, 1]))
        images = translate(images, shifts, pad)
    return tf.reverse(images, axis=[2]) if flipped else images
