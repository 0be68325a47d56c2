"""Batch-level image augmentation in pure TensorFlow (airbench style), vectorized over the batch.

Every function takes and returns NHWC image batches of any dtype (the airbench trainer feeds uint8
pixels, so augmenting costs a quarter of the memory traffic of float images). Randomness is
*stateless*: the same seed gives the same augmentation, which makes training resumable and testable.
"""

from __future__ import annotations

import tensorflow as tf


def flip_images(images: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mirror left-right the images whose entry in the boolean `mask` (shape (B,)) is true."""
    mask = tf.reshape(tf.cast(mask, tf.bool), [-1, 1, 1, 1])
    return tf.where(mask, tf.reverse(images, axis=[2]), images)


def alternating_flip_mask(base_mask: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
    """airbench's alternating flip: each image gets a random flip bit once (`base_mask`); on odd
    epochs every image is mirrored relative to that, so each image is seen both ways every two epochs."""
    odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
    return tf.math.logical_xor(tf.cast(base_mask, tf.bool), odd)


def reflect_pad(images: tf.Tensor, pad: int) -> tf.Tensor:
    return tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")


def crop(padded: tf.Tensor, offsets: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Per-image crop of `size` from `padded` at `offsets` (B, 2) = (row, col) of the top-left corner."""
    height, width = size
    offsets = tf.cast(offsets, tf.int32)
    rows = offsets[:, :1] + tf.range(height, dtype=tf.int32)[None, :]  # (B, height)
    cols = offsets[:, 1:] + tf.range(width, dtype=tf.int32)[None, :]  # (B, width)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, height, W+2p, C)
    return tf.gather(out, cols, axis=2, batch_dims=1)  # (B, height, width, C)


def translate(images: tf.Tensor, shifts: tf.Tensor, pad: int) -> tf.Tensor:
    """Shift each image by `shifts` (B, 2) pixels in [-pad, pad] with reflect padding (a shift of
    (+1, +1) takes the crop starting one pixel further down-right in the padded image)."""
    size = (images.shape[1] or tf.shape(images)[1], images.shape[2] or tf.shape(images)[2])
    return crop(reflect_pad(images, pad), tf.cast(shifts, tf.int32) + pad, size)


def random_shifts(batch: tf.Tensor | int, pad: int, seed: tf.Tensor) -> tf.Tensor:
    """Uniform integer shifts in [-pad, pad] for each of `batch` images, (B, 2) int32."""
    return tf.random.stateless_uniform(tf.stack([batch, 2]), seed=seed, minval=-pad, maxval=pad + 1, dtype=tf.int32)


def random_translate(images: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
    """airbench's `batch_crop`: reflect pad by `pad`, then a uniformly random crop per image."""
    return translate(images, random_shifts(tf.shape(images)[0], pad, seed), pad)


def flip_and_translate(images: tf.Tensor, seed, pad: int = 2, flip_mask: tf.Tensor | None = None) -> tf.Tensor:
    """Flip (by `flip_mask`, or a random half of the images when None) then randomly translate by up
    to `pad` pixels. `seed`: a shape-(2,) integer tensor or pair; the result is a function of it."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if flip_mask is None:
        flip_mask = tf.random.stateless_uniform(tf.shape(images)[:1], seed=flip_seed) < 0.5
    images = flip_images(images, flip_mask)
    return random_translate(images, pad, shift_seed) if pad > 0 else images


def tta_views(images: tf.Tensor | None = None, level: int = 2):
    """airbench's test-time augmentation as (weight, row shift, col shift, flipped) view specs; weights
    sum to one. level 0: the image; 1: + its mirror (½ each); 2: ½ of the level-1 average on the image,
    ½ on the two 1-pixel (reflect) translations up-left and down-right (each also mirrored)."""
    if level == 0:
        return [(1.0, 0, 0, False)]
    if level == 1:
        return [(0.5, 0, 0, False), (0.5, 0, 0, True)]
    if level == 2:
        views = [(0.25, 0, 0, False), (0.25, 0, 0, True)]
        for shift in (-1, 1):
            views += [(0.125, shift, shift, False), (0.125, shift, shift, True)]
        return views
    raise ValueError(f"tta level must be 0, 1 or 2, got {level}")


def make_view(images: tf.Tensor, row_shift: int, col_shift: int, flipped: bool) -> tf.Tensor:
    """One TTA view of a batch: a uniform translation (reflect padded) then optionally a mirror.
    A translation of +1 shows the content moved one pixel down/right."""
    if row_shift or col_shift:
        pad = max(abs(row_shift), abs(col_shift))
        batch = tf.shape(images)[0]
        # content moving down-right = crop starting up-left in the padded image
        shifts = tf.tile(tf.constant([[-row_shift, -col_shift]], tf.int32), tf.stack([batch, 1]))
        images = translate(images, shifts, pad)
    return tf.reverse(images, axis=[2]) if flipped else images
