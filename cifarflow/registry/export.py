"""The exported inference artifact: a TensorFlow SavedModel a client loads without this package.

Its endpoint `serve` (also the `serving_default` signature) takes uint8 pixels of shape [N, 32, 32, 3]
and returns {"probabilities": float32 [N, classes]}: the fitted normalization is the model's first
layer, the preset's test-time augmentation is traced in (`Preset.serving`) and so is the calibration
temperature (`cifarflow.calibration.temperature`), so a client sends raw pixels and gets the
calibrated probabilities the pipeline measured. `cifarflow.json` beside it names the classes and the
temperature.

    import tensorflow as tf
    model = tf.saved_model.load("data/registry/champion/export")
    probabilities = model.serve(pixels_uint8)["probabilities"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.data.archive import IMAGE_SHAPE
from cifarflow.files import read_json, write_json

ENDPOINT = "serve"
METADATA = "cifarflow.json"


def export_model(
    model_path: Path, preset: str, label_names: list[str], out_dir: Path, temperature: float | None = None
) -> Path:
    """Write the SavedModel for the `.keras` file at `model_path` into `out_dir` (which must not
    exist); with a `temperature`, its probabilities are softmax(log p / temperature) of the preset's."""
    import keras
    import tensorflow as tf

    from cifarflow.calibration.scores import TINY
    from cifarflow.models.presets import get_preset

    model = get_preset(preset).load(model_path)
    probabilities = get_preset(preset).serving_function(model)

    def calibrated(pixels):
        if temperature is None:
            return probabilities(pixels)
        return tf.nn.softmax(tf.math.log(tf.maximum(probabilities(pixels), TINY)) / temperature, axis=-1)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=ENDPOINT,
        fn=lambda pixels: {"probabilities": calibrated(pixels)},
        input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="pixels")],
    )
    archive.write_out(str(out_dir), verbose=False)
    write_json(
        Path(out_dir) / METADATA,
        {
            "endpoint": ENDPOINT,
            "input": {"name": "pixels", "dtype": "uint8", "shape": [None, *IMAGE_SHAPE]},
            "output": {"name": "probabilities", "dtype": "float32", "shape": [None, len(label_names)]},
            "label_names": list(label_names),
            "preset": preset,
            "temperature": temperature,
        },
    )
    return Path(out_dir)


def is_export(directory: Path) -> bool:
    return (Path(directory) / "saved_model.pb").is_file()


@dataclass
class ExportedModel:
    """A loaded export: `probabilities(pixels)` is the endpoint; metadata is cifarflow.json."""

    directory: Path
    metadata: dict[str, Any]
    _endpoint: Any
    _loaded: Any = None  # the restored object owns the variables the endpoint reads: keep it alive

    @property
    def label_names(self) -> list[str]:
        return self.metadata["label_names"]

    @property
    def preset(self) -> str:
        return self.metadata["preset"]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        if len(pixels) == 0:
            return np.zeros((0, len(self.label_names)), np.float32)
        return self._endpoint(tf.convert_to_tensor(np.asarray(pixels, np.uint8)))["probabilities"].numpy()


def load_export(directory: Path) -> ExportedModel:
    import tensorflow as tf

    directory = Path(directory)
    if not is_export(directory):
        raise FileNotFoundError(f"{directory} is not an exported model (no saved_model.pb)")
    loaded = tf.saved_model.load(str(directory))
    metadata = read_json(directory / METADATA)
    return ExportedModel(directory, metadata, getattr(loaded, metadata.get("endpoint", ENDPOINT)), loaded)
