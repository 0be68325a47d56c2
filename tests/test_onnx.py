"""Every registry version carries `model.onnx`, converted from its SavedModel, sealed with its files and checked in
the smoke test by onnxruntime alone (a fresh process without TensorFlow) against the SavedModel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifarflow.files import file_digest
from cifarflow.registry import onnx_export, store
from cifarflow.registry.build import VersionRejected, stage_next_version
from cifarflow.registry.saved_model import ONNX_TOLERANCE, export_model, load_export, smoke_test
from tests.conftest import REPO_ROOT
from tests.registry_helpers import canary_pixels, copy_data_dir, reseal, snapshot, tiny_model_file, version_inputs

pytestmark = pytest.mark.flow  # fresh processes of the product: not the unit tier

# a fresh process that runs the smoke test's onnxruntime entry point, then says which heavy modules it imported
ORT_ALONE = """
import json, runpy, sys
sys.argv = ["onnx_export", *sys.argv[1:]]
runpy.run_module("cifarflow.registry.onnx_export", run_name="__main__")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))))
"""


def onnxruntime_alone(model: Path, pixels: np.ndarray, scratch: Path) -> tuple[np.ndarray, list[str]]:
    """`model`'s probabilities of `pixels` from the smoke test's entry point in a fresh process, and the TensorFlow,
    Keras and tf2onnx modules that process imported."""
    np.savez(scratch / "canary.npz", pixels=pixels)
    command = [sys.executable, "-c", ORT_ALONE, str(model), str(scratch / "canary.npz"), str(scratch / "out.npy")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.load(scratch / "out.npy"), json.loads(done.stdout.strip().splitlines()[-1])


def test_a_registered_version_has_a_sealed_onnx_file_that_onnxruntime_alone_scores_like_the_savedmodel(
    two_versions, tmp_path
):
    version = store.read_version(two_versions / "registry", "v2")
    assert version.onnx_path == version.directory / "model.onnx" and version.onnx_path.is_file()
    assert version.files["model.onnx"]["sha256"] == file_digest(version.onnx_path)  # sealed with the rest
    smoke = json.loads((version.directory / "smoke.json").read_text())
    assert smoke["passed"] and smoke["onnx_agreement"] == 1.0 and smoke["onnx_max_difference"] <= ONNX_TOLERANCE
    assert version.smoke == smoke

    extremes = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    pixels = np.concatenate([canary_pixels(9, 30), extremes])
    scores, imported = onnxruntime_alone(version.onnx_path, pixels, tmp_path)
    assert imported == []  # onnxruntime alone: no TensorFlow, Keras or tf2onnx in that process
    saved = load_export(version.export_dir).probabilities(pixels)
    assert scores.shape == saved.shape == (32, 10) and scores.dtype == np.float32
    assert np.abs(scores - saved).max() <= ONNX_TOLERANCE
    np.testing.assert_array_equal(scores.argmax(axis=1), saved.argmax(axis=1))
    other = load_export(store.read_version(two_versions / "registry", "v1").export_dir).probabilities(pixels)
    assert np.abs(scores - other).max() > ONNX_TOLERANCE  # the tolerance tells the two versions' networks apart


@pytest.fixture(scope="module")
def fresh(two_versions, tmp_path_factory):
    """(a private registry copy's parent, a seed-3 network in no version, its version_inputs)."""
    base = tmp_path_factory.mktemp("onnx-module")
    model = tiny_model_file(base / "model-3" / "model.keras", 3)
    return base, model, version_inputs(model, 3)


CONVERT = onnx_export.export_onnx  # the real conversion, which the faults below wrap


def _convert_another_network(export_dir: Path, out_path: Path) -> Path:
    """model.onnx of v1's export (another network) in place of this one's: it loads and runs, with other answers."""
    return CONVERT(export_dir.parents[2] / "versions" / "v1" / "export", out_path)


def _convert_then_truncate(export_dir: Path, out_path: Path) -> Path:
    CONVERT(export_dir, out_path)
    out_path.write_bytes(out_path.read_bytes()[: out_path.stat().st_size // 2])
    return out_path


def _conversion_fails(export_dir: Path, out_path: Path) -> Path:
    raise ValueError("tf2onnx: unsupported op Foo")


@pytest.mark.parametrize(
    ("convert", "rejection"),
    [
        (_convert_another_network, r"FAILED: model.onnx (has another top class|differs from the SavedModel)"),
        (_convert_then_truncate, "FAILED: model.onnx in onnxruntime did not load or run: .*INVALID_PROTOBUF"),
        (_conversion_fails, "the ONNX conversion failed: ValueError: tf2onnx: unsupported op Foo"),
    ],
    ids=["another network", "truncated file", "conversion fails"],
)
def test_an_onnx_file_that_fails_rejects_the_version_and_leaves_the_registry_as_it_was(
    two_versions, fresh, monkeypatch, tmp_path, convert, rejection
):
    registry = copy_data_dir(two_versions, tmp_path / "data") / "registry"
    _, model, (record, metrics, predictions, labels, canary) = fresh
    monkeypatch.setattr(onnx_export, "export_onnx", convert)
    before = snapshot(registry)
    with pytest.raises(VersionRejected, match=rejection):
        stage_next_version(registry, model, record, metrics, predictions, labels, canary, log=lambda _: None)
    assert snapshot(registry) == before
    assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"] and store.champion_name(registry) == "v2"


def test_a_version_registered_before_onnx_keeps_loading_and_serving(two_versions, tmp_path):
    from cifarflow.inference.predictor import load_predictor

    registry = copy_data_dir(two_versions, tmp_path / "data") / "registry"
    version = store.read_version(registry, "v2")
    version.onnx_path.unlink()
    reseal(version.directory)  # sealed without it, as the versions registered before were
    assert store.problems(registry) == []
    predictor = load_predictor("champion", registry)
    pixels = canary_pixels(4, 5)
    np.testing.assert_allclose(predictor.probabilities(pixels), load_export(version.export_dir).probabilities(pixels))


def airbench_model(path: Path, policy: str, side: int = 16, classes: int = 4) -> Path:
    """A `quick` (airbench) network at the smallest size it takes, built under `policy` and returned in float32 as
    training returns it (`in_float32`), with random non-zero weights (its built head is zero, which would give every
    class the same probability)."""
    import keras

    from cifarflow.data.transform import Normalization
    from cifarflow.models.presets import get_preset
    from cifarflow.training.airbench_loop import in_float32

    keras.mixed_precision.set_global_policy(policy)
    try:
        norm = Normalization("standardize", (125.0, 123.0, 114.0), (63.0, 62.0, 66.0))
        model = get_preset("quick").build(norm, num_classes=classes, image_size=side, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    weights = []
    for variable, value in zip(model.weights, model.get_weights()):
        if "variance" in variable.path:
            weights.append(np.abs(rng.normal(1, 0.1, value.shape)))
        else:  # a vector, a kernel, the head (scaled by 1/fan-in after it)
            spread = (
                0.1 if value.ndim == 1 else (40 if variable.path == "head/kernel" else 2) / np.sqrt(value[..., 0].size)
            )
            weights.append(rng.normal(0, spread, value.shape))
    model.set_weights(weights)
    model = in_float32(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def test_an_airbench_network_built_in_bfloat16_converts_its_exact_gelu_and_passes_the_onnx_smoke_test(tmp_path):
    import onnx as onnx_format

    from cifarflow.models.presets import get_preset

    model = airbench_model(tmp_path / "model.keras", "mixed_bfloat16")  # as a CPU with bfloat16 trains it
    export = export_model(model, "quick", ["a", "b", "c", "d"], tmp_path / "export")
    onnx = onnx_export.export_onnx(export, tmp_path / "model.onnx")
    operators = {node.op_type for node in onnx_format.load(onnx).graph.node}
    assert "Erf" in operators and not operators & {"Erfc", "Tanh"}  # the exact GELU, not tanh's approximation
    pixels = canary_pixels(5, 40, side=16)
    quick = get_preset("quick")
    expected = quick.predict(quick.load(model), pixels)
    assert expected.max(axis=1).min() > 0.5  # the random weights decide, not a tie of every class
    result = smoke_test(export, pixels, expected, onnx=onnx)
    assert result.passed, result.summary
    assert result.onnx_agreement == 1.0 and result.onnx_max_difference <= ONNX_TOLERANCE
    assert "model.onnx in onnxruntime alone: max |Δp|" in result.summary
