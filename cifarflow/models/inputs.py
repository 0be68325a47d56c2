"""The input end every network shares: uint8 pixels in, the fitted transform applied first.

Because the normalization is a layer of the model, a saved `.keras` file takes raw pixels and
nobody (evaluation, batch prediction, a server) can normalize differently from training."""

from __future__ import annotations

import keras
from keras import layers

from cifarflow.data.archive import IMAGE_SHAPE
from cifarflow.data.transform import Normalization


def pixel_input(shape: tuple[int, ...] = IMAGE_SHAPE) -> keras.KerasTensor:
    return keras.Input(shape=shape, name="pixels", dtype="uint8")


def normalize(pixels: keras.KerasTensor, normalization: Normalization) -> keras.KerasTensor:
    """float32 `pixels * scale + offset`, per channel, whatever the global dtype policy: under mixed
    precision a bf16 stem would put rounding noise on high-gain channels (e.g. airbench's whitening)."""
    return layers.Rescaling(
        scale=normalization.scale.tolist(),
        offset=normalization.offset.tolist(),
        name="normalize",
        dtype="float32",
    )(pixels)
