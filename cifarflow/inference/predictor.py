"""A model ready to score pixels: what batch prediction and the service hold.

`--model` accepts `champion` (the registry's alias), a version (`v3`), or a path: a registry version
directory, an exported SavedModel directory, or a `.keras` file (its preset is read from the
`train.json` the trainer wrote beside it). Registry versions are scored through their exported
artifact, so batch prediction, the service and any other client run the same graph, and get the
calibrated probabilities (the temperature is traced into the export). A bare `.keras` file is the
network as trained: its probabilities are not calibrated, since the temperature is fitted after it.
"""

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
from cifarflow.registry.export import is_export, load_export
from cifarflow.registry.records import version_fix

# the official archive's batches.meta order; used only for a bare .keras file with no record beside it
CIFAR10_LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TOP_K = 3


class ModelNotFound(PipelineInputError):
    """`--model` names nothing loadable; the message says what exists."""


@dataclass
class Predictor:
    version: str  # "v3", or the path it was loaded from
    label_names: list[str]
    probabilities: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # uint8 (N, 32, 32, 3) → (N, classes)
    source_preset: str | None = None  # a model outside the registry: the preset that built it, if known
    source_id: str | None = None  # a model outside the registry: the sha256 of its file, if known
    record: store.VersionRecord | None = None  # a registry version's version.json

    @property
    def preset(self) -> str | None:
        """The preset that built the model, when known."""
        return self.record.preset if self.record else self.source_preset

    @property
    def model_id(self) -> str | None:
        """sha256 of the model file, when known."""
        return self.record.model_id if self.record else self.source_id

    def top(self, probabilities: np.ndarray, k: int = TOP_K) -> list[list[dict[str, Any]]]:
        """Per row, the k most probable classes, most probable first: [{"label", "probability"}, …]."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [{"label": self.label_names[i], "probability": float(row[i])} for i in ranks]
            for row, ranks in zip(probabilities, order)
        ]


def locate(spec: str, registry: Path) -> store.Version | Path:
    """What `spec` names, checked without loading anything (the command line calls it before a flow
    starts): a registry version's every file checked against what was registered (`store.load_version`).
    ModelNotFound says why it names nothing ("no champion yet", an unknown version, a path that is not
    there); store.RegistryDamaged names a registry file that is damaged and what to do."""
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
        except store.RegistryDamaged as damage:
            raise store.champion_damage(registry, damage) from None
        except store.RegistryError as error:
            raise ModelNotFound(str(error)) from None
    path = Path(spec).expanduser()
    try:
        loadable = (path.is_dir() and (store.is_whole(path) or is_export(path))) or (
            path.is_file() and path.suffix == ".keras"
        )
    except OSError as error:  # a name too long, a folder on the way not readable
        raise ModelNotFound(f"--model {spec}: {error.strerror}") from None
    if not loadable:
        raise ModelNotFound(
            f"--model {spec}: not `champion`, a version (v1, v2, …), a registry version folder, an exported "
            "SavedModel folder or a .keras file"
        )
    return path


def load_predictor(spec: str, registry: Path) -> Predictor:
    """The model `spec` names (see the module docstring); ModelNotFound or store.RegistryDamaged says why not."""
    found = locate(spec, registry)
    return from_version(found) if isinstance(found, store.Version) else from_path(found)


def from_version(version: store.Version) -> Predictor:
    """The version's export, loaded (its files were checked by `store.load_version`); RegistryDamaged
    naming the export when it still does not load (an unverified version's, or damage since the check)."""
    try:
        exported = load_export(version.export_dir)
        label_names = list(exported.label_names)
    except Exception as error:  # TensorFlow's errors for a cut graph, a KeyError, a JSONDecodeError
        problem = f"the SavedModel does not load: {type(error).__name__}: {str(error).strip()[:300]}"
        raise store.RegistryDamaged(version.export_dir, problem, version_fix(version.directory), version.name) from None
    return Predictor(version.name, label_names, exported.probabilities, record=version.record)


def from_path(path: Path) -> Predictor:
    if path.is_dir() and store.is_whole(path):
        return from_version(store.load_version(path))
    if path.is_dir() and is_export(path):
        exported = load_export(path)
        return Predictor(str(path), exported.label_names, exported.probabilities, source_preset=exported.preset)
    if path.is_file() and path.suffix == ".keras":
        return from_keras_file(path)
    raise ModelNotFound(
        f"--model {path}: not `champion`, a version (v1, v2, …), a registry version folder, an exported "
        "SavedModel folder or a .keras file"
    )


def from_keras_file(path: Path) -> Predictor:
    """A `.keras` file scored with its preset's serving arithmetic (the same as its export would be)."""
    import tensorflow as tf

    name = read_whole(lambda: read_json(path.parent / "train.json")["settings"]["model"])
    if not isinstance(name, str) or name not in (*PRESETS, *RENAMED):
        raise ModelNotFound(
            f"{path}: no train.json beside it says which preset made it (one of {', '.join(PRESETS)}); "
            "pass its registry version or export instead"
        )
    preset = get_preset(name)
    graph = tf.function(preset.serving_function(preset.load(path)), reduce_retracing=True)

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        return graph(tf.convert_to_tensor(np.asarray(pixels, np.uint8))).numpy()

    return Predictor(
        str(path), list(CIFAR10_LABEL_NAMES), probabilities, source_preset=name, source_id=file_digest(path)
    )
