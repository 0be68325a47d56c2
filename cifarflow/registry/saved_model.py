"""A version's TensorFlow SavedModel, which a client loads without this package, and the smoke test it passes in
a fresh process (`python -m cifarflow.registry.saved_model EXPORT CANARY.npz OUT.npy`) before it is registered, with
its `model.onnx` (cifarflow.registry.onnx_export) scored by onnxruntime alone in another.

    model = tf.saved_model.load(path)  # path: `python flows/registry_flow.py path champion` prints it
    probabilities = model.serve(pixels_uint8)["probabilities"]  # [N, S, S, 3] uint8 → float32 [N, classes]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import read_json, write_json

ENDPOINT = "serve"  # also the `serving_default` signature
METADATA = "cifarflow.json"  # beside the SavedModel: endpoint, input, output, label names, image size, data set…
CANARY = 1000  # canary images, spread over the classes: one disagreement in 1,000 is the most 99.9% allows
MIN_AGREEMENT = 0.999  # share of canary images whose top-1 class must be evaluation's
TOLERANCE = 1e-3  # max |Δ probability|; float32 graph vs evaluation's float64 sum of the views is ~1e-6
ONNX_TOLERANCE = 1e-4  # max |Δ probability| of model.onnx against the SavedModel (measured ≤ 3e-8)
TIMEOUT_S = 600


def export_model(
    model_path: Path,
    preset: str,
    label_names: list[str],
    out_dir: Path,
    temperature: float | None = None,
    dataset: dict | None = None,
) -> Path:
    """Write the SavedModel of the `.keras` file at `model_path` into `out_dir` (which must not exist): the
    preset's serving function (its test-time augmentation traced in) of [None, S, S, 3] uint8 (S: the model's input
    side), with a `temperature` softmax(log p / T); `dataset`, the data set it was trained on, goes into METADATA."""
    import keras
    import tensorflow as tf

    from cifarflow.calibration.scores import TINY
    from cifarflow.models.presets import get_preset

    model = get_preset(preset).load(model_path)
    probabilities = get_preset(preset).serving_function(model)
    side = int(model.input_shape[1])

    def calibrated(pixels):
        if temperature is None:
            return probabilities(pixels)
        return tf.nn.softmax(tf.math.log(tf.maximum(probabilities(pixels), TINY)) / temperature, axis=-1)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=ENDPOINT,
        fn=lambda pixels: {"probabilities": calibrated(pixels)},
        input_signature=[tf.TensorSpec([None, side, side, 3], tf.uint8, name="pixels")],
    )
    archive.write_out(str(out_dir), verbose=False)
    metadata = {
        "endpoint": ENDPOINT,
        "input": {"name": "pixels", "dtype": "uint8", "shape": [None, side, side, 3]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": [None, len(label_names)]},
        "label_names": list(label_names),
        "image_size": side,
        "dataset": dataset,
        "preset": preset,
        "temperature": temperature,
    }
    write_json(Path(out_dir) / METADATA, metadata)
    return Path(out_dir)


def is_export(directory: Path) -> bool:
    return (Path(directory) / "saved_model.pb").is_file()


@dataclass
class ExportedModel:
    """A loaded export: its cifarflow.json's `label_names`, `image_size` and `preset`, its `endpoint` (the traced
    function: uint8 tensor [N, S, S, 3] → {"probabilities": float32 [N, classes]}) and `probabilities(pixels)`."""

    label_names: list[str]
    image_size: int
    preset: str
    endpoint: Any
    _loaded: Any  # the restored object owns the variables the endpoint reads: keep it alive

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, image_size, image_size, 3) → float32 (N, classes)."""
        import tensorflow as tf

        if len(pixels) == 0:
            return np.zeros((0, len(self.label_names)), np.float32)
        return self.endpoint(tf.convert_to_tensor(np.asarray(pixels, np.uint8)))["probabilities"].numpy()


def load_export(directory: Path) -> ExportedModel:
    """The export in `directory`; FileNotFoundError when it holds none, TensorFlow's errors when it is damaged."""
    import tensorflow as tf

    if not is_export(directory):
        raise FileNotFoundError(f"{directory} is not an exported model (no saved_model.pb)")
    loaded = tf.saved_model.load(str(directory))
    metadata = read_json(Path(directory) / METADATA)
    endpoint = getattr(loaded, metadata.get("endpoint", ENDPOINT))
    return ExportedModel(metadata["label_names"], export_image_size(metadata), metadata["preset"], endpoint, loaded)


def export_image_size(metadata: dict[str, Any]) -> int:
    """The side S an export's cifarflow.json scores: its `image_size`, or for an export written before that was kept,
    its input shape [None, S, S, 3]."""
    return metadata.get("image_size") or metadata["input"]["shape"][1]


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    images: int
    agreement: float  # share of canary images with evaluation's top-1 class
    max_difference: float  # largest absolute probability difference
    seconds: float
    reason: str  # why it failed, or "" when it passed
    onnx_agreement: float | None = None  # share of canary images where model.onnx has the SavedModel's top class
    onnx_max_difference: float | None = None  # largest |Δp| of model.onnx against the SavedModel (None: not run)

    def to_json(self) -> dict:
        return asdict(self) | {"min_agreement": MIN_AGREEMENT, "tolerance": TOLERANCE, "onnx_tolerance": ONNX_TOLERANCE}

    @property
    def summary(self) -> str:
        verdict = "passed" if self.passed else f"FAILED: {self.reason}"
        onnx = ""
        if self.onnx_max_difference is not None:
            onnx = (
                f"; model.onnx in onnxruntime alone: max |Δp| {self.onnx_max_difference:.1e} from the SavedModel, "
                f"its top class on {self.onnx_agreement:.2%}"
            )
        return (
            f"smoke test {verdict} ({self.images} canary images in a fresh process: top-1 agreement "
            f"{self.agreement:.2%}, max |Δp| {self.max_difference:.1e}{onnx}, {self.seconds:.1f} s)"
        )


def canary_indices(labels: np.ndarray, total: int = CANARY) -> np.ndarray:
    """The first ⌈total / classes⌉ test images of each class, in test order: fixed for a test set, every class in
    it, about `total` in all (fewer where a class has fewer)."""
    labels = np.asarray(labels)
    per_class = -(-total // max(1, len(np.unique(labels))))
    chosen = [np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def smoke_test(
    export_dir: Path, pixels: np.ndarray, expected: np.ndarray, timeout_s: float = TIMEOUT_S, onnx: Path | None = None
) -> SmokeResult:
    """Score `pixels` with the export in a fresh Python process, as a server would load it; it passes with
    evaluation's top-1 class on MIN_AGREEMENT of them and every probability within TOLERANCE of `expected`, and, with
    `onnx`, that file scored by onnxruntime alone in another within ONNX_TOLERANCE of the export, top classes equal."""
    started, failed = time.perf_counter(), (False, len(pixels), 0.0, float("inf"))
    actual = fresh_scores("cifarflow.registry.saved_model", export_dir, pixels, timeout_s)
    if isinstance(actual, str):
        return SmokeResult(*failed, time.perf_counter() - started, f"the export {actual}")
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape or not np.isfinite(actual).all():
        return SmokeResult(
            *failed,
            time.perf_counter() - started,
            f"the export returned {actual.shape}, expected {expected.shape} finite values",
        )
    agreement, difference = compare(actual, expected)
    reason = f"a probability differs by {difference:.1e}, over the tolerance {TOLERANCE:g}"
    if agreement < MIN_AGREEMENT:
        reason = f"top-1 agreement {agreement:.2%} is below {MIN_AGREEMENT:.1%}"
    elif difference <= TOLERANCE:
        reason = ""
    result = SmokeResult(not reason, len(pixels), agreement, difference, 0.0, reason)
    if onnx is not None and not reason:
        result = onnx_check(result, onnx, pixels, actual, timeout_s)
    return replace(result, seconds=time.perf_counter() - started)


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(share of rows with the same top class, max |Δ|) of two (N, classes) arrays; (1.0, 0.0) when N = 0."""
    if not len(actual):
        return 1.0, 0.0
    same = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return same, float(np.abs(np.asarray(actual, np.float64) - expected).max())


def onnx_check(result: SmokeResult, onnx: Path, pixels: np.ndarray, saved: np.ndarray, timeout_s: float) -> SmokeResult:
    """`result` with the ONNX numbers: `onnx` scored by onnxruntime alone in a fresh process against the SavedModel's
    probabilities `saved`; failed unless within ONNX_TOLERANCE with the same top class on every image."""
    scores = fresh_scores("cifarflow.registry.onnx_export", onnx, pixels, timeout_s)
    if isinstance(scores, str) or scores.shape != saved.shape or not np.isfinite(scores).all():
        problem = (
            scores if isinstance(scores, str) else f"returned {scores.shape}, expected {saved.shape} finite values"
        )
        return replace(result, passed=False, reason=f"{onnx.name} in onnxruntime {problem}")
    agreement, difference = compare(scores, saved)
    reason = ""
    if agreement < 1.0:
        reason = f"{onnx.name} has another top class than the SavedModel on {agreement:.2%} of the images"
    elif difference > ONNX_TOLERANCE:
        reason = f"{onnx.name} differs from the SavedModel by {difference:.1e}, over {ONNX_TOLERANCE:g}"
    return replace(result, passed=not reason, reason=reason, onnx_agreement=agreement, onnx_max_difference=difference)


def fresh_scores(module: str, model: Path, pixels: np.ndarray, timeout_s: float) -> np.ndarray | str:
    """(N, classes) of `python -m module MODEL CANARY.npz OUT.npy` run in a fresh process, or why it gave none."""
    with tempfile.TemporaryDirectory(prefix="cifarflow-smoke-") as scratch:
        canary, out = Path(scratch) / "canary.npz", Path(scratch) / "probabilities.npy"
        np.savez(canary, pixels=np.asarray(pixels, np.uint8))
        command = [sys.executable, "-m", module, str(model), str(canary), str(out)]
        quiet = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}  # so stderr's last line is the error, not a TF notice
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=quiet)
        except subprocess.TimeoutExpired:
            return f"gave no answer in {timeout_s:.0f} s"
        if done.returncode != 0:
            return f"did not load or run: {(done.stderr.strip().splitlines() or ['(no output)'])[-1]}"
        return np.load(out)


if __name__ == "__main__":
    export_dir, canary_path, out_path = sys.argv[1:]
    np.save(out_path, load_export(Path(export_dir)).probabilities(np.load(canary_path)["pixels"]))
