"""The input end every network shares: uint8 pixels, then the fitted normalization as the first layer."""

from __future__ import annotations

import keras
from keras import layers

from cifarflow.data.transform import Normalization


def normalized_input(normalization: Normalization, image_size: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The uint8 (image_size, image_size, 3) pixel input and, from it, float32 `pixels * scale + offset` whatever the
    dtype policy (bf16 rounding hurts high-gain channels)."""
    pixels = keras.Input(shape=(image_size, image_size, 3), name="pixels", dtype="uint8")
    scale, offset = normalization.scale.tolist(), normalization.offset.tolist()
    return pixels, layers.Rescaling(scale=scale, offset=offset, name="normalize", dtype="float32")(pixels)
