"""A model ready to score pixels. `--model` is `champion`, a version (`v3`), a registry version folder, an exported
SavedModel folder, or a `.keras` file (preset from the `train.json` beside it). Versions are scored through their
export, calibration traced in; a bare `.keras` file's probabilities are the network's, uncalibrated. Its classes and
image size are the model's own: the export's metadata, or a bare file's input shape and train.json's data set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.errors import PipelineInputError
from cifarflow.files import file_digest, read_json
from cifarflow.models.presets import PRESETS, RENAMED, get_preset
from cifarflow.outputs import read_whole
from cifarflow.registry import store
from cifarflow.registry.saved_model import is_export, load_export

TOP_K = 3


class ModelNotFound(PipelineInputError):
    """`--model` names nothing loadable; the message says what exists."""


@dataclass
class Predictor:
    version: str  # "v3", or the path it was loaded from
    label_names: list[str]
    image_size: int  # S: the side of the square images it scores
    probabilities: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # uint8 (N, S, S, 3) → (N, classes)
    preset: str | None = None  # the preset that built it, when known
    model_id: str | None = None  # sha256 of the model file, when known
    record: store.VersionRecord | None = None  # a registry version's record

    def top(self, probabilities: np.ndarray, k: int = TOP_K) -> list[list[dict[str, Any]]]:
        """Per row, the k most probable classes, most probable first: [{"label", "probability"}, …]."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [{"label": self.label_names[i], "probability": float(row[i])} for i in ranks]
            for row, ranks in zip(probabilities, order)
        ]


def locate(spec: str, registry: Path) -> store.Version | Path:
    """What `spec` names, without loading a network: a registry version (its files checked) or a path.
    ModelNotFound says why it names nothing; store.RegistryDamaged names a damaged registry file and the fix."""
    spec = str(spec)
    if spec == store.ALIAS:
        version = store.read_champion_version(registry)
        if version is None:
            raise ModelNotFound(
                f"no champion in {registry} yet: run the pipeline first (`make run` or python flows/cifar_flow.py), "
                "or pass --model"
            )
        return version
    if store.VERSION_NAME.match(spec):
        try:
            return store.read_version(registry, spec)
        except store.RegistryDamaged:
            raise
        except store.RegistryError as error:  # an unknown version
            raise ModelNotFound(str(error)) from None
    path = Path(spec).expanduser()
    try:
        if path.is_dir() and (path / "version.json").is_file():
            return store.load_version(path)
        if (path.is_dir() and is_export(path)) or (path.is_file() and path.suffix == ".keras"):
            return path
    except OSError as error:  # a name too long, a folder on the way not readable
        raise ModelNotFound(f"--model {spec}: {error.strerror}") from None
    raise ModelNotFound(
        f"--model {spec}: not `champion`, a version (v1, v2, …), a registry version folder, an exported "
        "SavedModel folder or a .keras file"
    )


def load_predictor(spec: str, registry: Path) -> Predictor:
    """The model `spec` names (see `locate`); ModelNotFound or store.RegistryDamaged says why not."""
    found = locate(spec, registry)
    if isinstance(found, store.Version):
        return from_version(found)
    if is_export(found):
        exported = load_export(found)
        size = exported.image_size
        return Predictor(str(found), list(exported.label_names), size, exported.probabilities, preset=exported.preset)
    return from_keras_file(found)


def from_version(version: store.Version) -> Predictor:
    """The version's export, loaded; RegistryDamaged naming the export when it does not load (damaged since checked)."""
    try:
        exported = load_export(version.export_dir)
        label_names, size = list(exported.label_names), exported.image_size
    except Exception as error:  # TensorFlow's errors for a cut graph, a KeyError, a JSONDecodeError
        problem = f"the SavedModel does not load: {type(error).__name__}: {str(error).strip()[:300]}"
        fix = store.version_fix(version.directory)
        raise store.RegistryDamaged(version.export_dir, problem, fix, version.name) from None
    return Predictor(version.name, label_names, size, exported.probabilities, version.preset, version.model_id, version)


def from_keras_file(path: Path) -> Predictor:
    """A `.keras` file scored with its preset's serving arithmetic (the same as its export would be); its classes from
    the train.json beside it, else from the manifest of the data dir it was trained in (`models/<key>/model.keras`)."""
    import tensorflow as tf

    train = read_whole(lambda: read_json(path.parent / "train.json"))
    name = train.get("settings", {}).get("model") if isinstance(train, dict) else None
    if not isinstance(name, str) or name not in (*PRESETS, *RENAMED):
        raise ModelNotFound(
            f"{path}: no train.json beside it says which preset made it (one of {', '.join(PRESETS)}); "
            "pass its registry version or export instead"
        )
    preset = get_preset(name)
    model = preset.load(path)
    data_dir = path.resolve().parent.parent.parent  # <data dir>/models/<key>/model.keras
    manifest = read_whole(lambda: read_json(data_dir / "parquet" / "manifest.json"))
    named = [source.get("label_names") for source in (train, manifest) if isinstance(source, dict)]
    label_names = next(
        (names for names in named if isinstance(names, list) and len(names) == model.output_shape[-1]), None
    )
    if label_names is None:
        raise ModelNotFound(
            f"{path}: neither the train.json beside it nor its data dir names the model's {model.output_shape[-1]} "
            "classes; pass its registry version or export instead"
        )
    graph = tf.function(preset.serving_function(model), reduce_retracing=True)

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        return graph(tf.convert_to_tensor(np.asarray(pixels, np.uint8))).numpy()

    size = model.input_shape[1]
    return Predictor(str(path), label_names, size, probabilities, preset=name, model_id=file_digest(path))
