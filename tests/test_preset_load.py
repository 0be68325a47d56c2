"""Every preset's saved `.keras` model loads, exports and predicts in a fresh process, as
`flows/predict_flow.py --model path/to/model.keras` and a promotion whose evaluate was cached do:
nothing that an earlier import in the same process happened to register (evaluation's import of the
custom layers, once) may be needed. The fresh process scores the pixels three ways (the preset's
`load` + predictor, the exported SavedModel, `load_predictor` on the `.keras` path); each must give
the probabilities the in-memory network's predictor gives here. An export with a calibration
temperature must return those probabilities with the temperature applied."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cifarflow.calibration.calibrate import apply_temperature
from cifarflow.models.presets import PRESETS, Preset
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.flow

TOLERANCE = 1e-5  # float32 graphs vs the predictors' own arithmetic: ~1e-7 apart
TEMPERATURE = 2.5
CIFAR_STATISTICS = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))  # mean, std of the training pixels

# One fresh process scores every preset (a process each would triple TensorFlow's start-up). Each preset
# loads as if it were the process's first: what earlier presets registered with Keras, and the modules
# that registered it, are forgotten first, so no preset's load can lean on another's, whatever the order.
FRESH_PROCESS = """
import sys
from pathlib import Path

import keras
import numpy as np

from cifarflow.inference.predictor import load_predictor
from cifarflow.models.presets import PRESETS
from cifarflow.registry.saved_model import export_model, load_export

work = Path(sys.argv[1])
names = [f"class {i}" for i in range(10)]
pixels = np.load(work / "pixels.npy")
registered = keras.saving.get_custom_objects()
at_start = set(registered)
for name, preset in PRESETS.items():
    for added in set(registered) - at_start:
        sys.modules.pop(registered.pop(added).__module__, None)
    model_path = work / name / "model.keras"
    loaded = preset.predict(preset.load(model_path), pixels)
    export_model(model_path, name, names, work / name / "export")
    exported = load_export(work / name / "export").probabilities(pixels)
    from_file = load_predictor(str(model_path), work / "registry").probabilities(pixels)
    export_model(model_path, name, names, work / name / "calibrated", float(sys.argv[2]))
    calibrated = load_export(work / name / "calibrated").probabilities(pixels)
    np.savez(work / name / "fresh.npz", loaded=loaded, exported=exported, from_file=from_file, calibrated=calibrated)
"""


def untrained_network(preset: Preset, seed: int):
    """The preset's network as its builder initializes it, except that a kernel the builder leaves at
    zero for training to set from the data (airbench's whitening, of gain up to 1/√eps ≈ 45) is drawn at
    random with gain 10: left at zero, it would make the network's output the same for every image."""
    import keras

    from cifarflow.data.transform import Normalization

    keras.utils.set_random_seed(seed)
    shape = {"num_classes": 10, "image_size": 32}
    model = preset.build(Normalization(preset.normalization, *CIFAR_STATISTICS), **shape, seed=seed)
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.normal(0, 10 / np.sqrt(np.prod(w.shape[:-1])), w.shape).astype(w.dtype)
            if w.ndim >= 2 and not w.any()
            else w
            for w in model.get_weights()
        ]
    )
    return model


def save_as_trained(model, preset: Preset, directory: Path) -> Path:
    """model.keras with the train.json the trainer writes beside it (it names the preset and the classes)."""
    from cifarflow.training.run import TrainSettings

    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    settings = TrainSettings(preset.name, preset.epochs, preset.batch_size, preset.learning_rate, seed=0)
    names = [f"class {i}" for i in range(10)]
    (directory / "train.json").write_text(json.dumps({"settings": asdict(settings), "label_names": names}))
    return directory / "model.keras"


def test_every_preset_loads_exports_and_predicts_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(0)
    tints = rng.integers(0, 256, (8, 1, 1, 3))  # images of different colours, so the outputs differ
    pixels = np.clip(tints + rng.integers(-40, 40, (8, 32, 32, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    networks = {name: untrained_network(preset, seed) for seed, (name, preset) in enumerate(PRESETS.items())}
    for name, model in networks.items():
        save_as_trained(model, PRESETS[name], tmp_path / name)
    fresh = subprocess.Popen(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path), str(TEMPERATURE)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    expected = {name: PRESETS[name].predict(model, pixels) for name, model in networks.items()}  # meanwhile
    _, stderr = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, stderr[-4000:]
    for name in PRESETS:
        assert np.ptp(expected[name], axis=0).max() > 10 * TOLERANCE, f"{name}: the outputs barely depend on the pixels"
        scored = np.load(tmp_path / name / "fresh.npz")
        for way in ("loaded", "exported", "from_file"):
            np.testing.assert_allclose(scored[way], expected[name], atol=TOLERANCE, err_msg=f"{name}, {way}")
        calibrated = apply_temperature(expected[name], TEMPERATURE)
        assert np.abs(calibrated - expected[name]).max() > 10 * TOLERANCE  # the temperature changes them
        np.testing.assert_allclose(scored["calibrated"], calibrated, atol=TOLERANCE, err_msg=f"{name}, calibrated")
        assert json.loads((tmp_path / name / "calibrated" / "cifarflow.json").read_text())["temperature"] == TEMPERATURE
