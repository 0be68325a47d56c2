"""The robustness stage: accuracy and ECE under six corruptions at three severities on the first SUBSET test
images, through the preset's serving function and each image's held-out temperature: the deployed model's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.calibration.calibrate import apply_temperature, half_of, held_out_temperatures
from cifarflow.calibration.scores import calibration_scores
from cifarflow.data import corruptions
from cifarflow.data.transform import load_split
from cifarflow.files import atomic_directory, file_digest, read_json, write_json
from cifarflow.outputs import StageOutput, read_whole

SUBSET = 2000
BATCH = 250  # images per graph call: the fastest of 250/500/1000 for `quick` on 2 cores

# corruption → (parameter, three severities, mildest first, and how each reads in a table); noise, JPEG, brightness
# and contrast act per value, blur's radius is in pixels: the severities were calibrated on CIFAR-10's 32 px images,
# so a blur is milder on larger ones (pixelate scales with the image)
SEVERITIES: dict[str, tuple[str, tuple[float, ...], tuple[str, ...]]] = {
    "brightness": ("factor", (0.7, 0.5, 0.3), ("×0.7", "×0.5", "×0.3")),
    "contrast": ("factor", (0.7, 0.5, 0.3), ("×0.7", "×0.5", "×0.3")),
    "gaussian_noise": ("sigma", (10.0, 20.0, 30.0), ("σ 10", "σ 20", "σ 30")),
    "blur": ("radius", (0.5, 1.0, 1.5), ("r 0.5", "r 1", "r 1.5")),
    "jpeg": ("quality", (30, 10, 5), ("q 30", "q 10", "q 5")),
    "pixelate": ("scale", (0.75, 0.5, 0.375), ("¾ size", "½ size", "⅜ size")),
}


@dataclass(frozen=True)
class Robustness(StageOutput):
    directory: Path
    summary_sha256: str

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("summary_sha256"))


def corrupted_sets(pixels: np.ndarray) -> Iterator[tuple[str, int, np.ndarray]]:
    """(corruption, severity 1..3, corrupted copy of `pixels`) for every entry of SEVERITIES."""
    for name, (parameter, values, _) in SEVERITIES.items():
        apply = corruptions.CORRUPTIONS[name].apply
        for severity, value in enumerate(values, start=1):
            yield name, severity, apply(pixels, **{parameter: value}, seed=severity)


def score_corruptions(
    probabilities_of, pixels: np.ndarray, labels: np.ndarray, clean: np.ndarray, temperature: float | np.ndarray
) -> dict[str, Any]:
    """Accuracy and ECE per corruption and severity of `probabilities_of(uint8 batch)` scaled by `temperature`."""
    labels = np.asarray(labels).astype(np.int64)
    clean_scores = calibration_scores(apply_temperature(clean, temperature), labels)
    table: dict[str, Any] = {}
    for name, _, images in corrupted_sets(pixels):
        probabilities = np.concatenate([probabilities_of(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
        scores = calibration_scores(apply_temperature(probabilities, temperature), labels)
        entry = table.setdefault(name, {"severities": list(SEVERITIES[name][2]), "accuracy": [], "ece": []})
        entry["accuracy"].append(round(scores.accuracy, 6))
        entry["ece"].append(round(scores.ece, 6))
    return {
        "images": int(len(labels)),
        "clean_accuracy": round(clean_scores.accuracy, 6),
        "clean_ece": round(clean_scores.ece, 6),
        "mean_corruption_accuracy": round(float(np.mean([a for v in table.values() for a in v["accuracy"]])), 6),
        "mean_corruption_ece": round(float(np.mean([e for v in table.values() for e in v["ece"]])), 6),
        "corruptions": table,
    }


def measure_robustness(
    model_path: Path,
    preset_name: str,
    features_dir: Path,
    evaluated: Path,
    half_temperatures: tuple[float, float],
    out_dir: Path,
    log=print,
) -> Robustness:
    """Write out_dir/robustness.json whole; `evaluated`: the evaluate stage's probabilities.npy."""
    import tensorflow as tf

    from cifarflow.models.presets import get_preset

    started = time.perf_counter()
    preset = get_preset(preset_name)
    # XLA-compiled: the same arithmetic (4e-7 apart), 16% faster for `quick` on 2 cores
    graph = tf.function(preset.serving_function(preset.load(model_path)), jit_compile=True, reduce_retracing=True)
    labels = np.asarray(load_split(features_dir, "test", "labels")[:SUBSET]).astype(np.int64)
    pixels = np.asarray(load_split(features_dir, "test", "pixels")[:SUBSET])
    clean = np.load(evaluated, mmap_mode="r")[: len(labels)]
    temperatures = held_out_temperatures(half_of(pixels), half_temperatures)
    table = score_corruptions(
        lambda batch: graph(tf.convert_to_tensor(batch)).numpy(), pixels, labels, clean, temperatures
    )
    log(  # the time is logged, not written: the output's fingerprint must not change with it
        f"robustness on {table['images']} test images: clean accuracy {table['clean_accuracy']:.4f}, "
        f"mean over {sum(len(v['accuracy']) for v in table['corruptions'].values())} corruptions "
        f"{table['mean_corruption_accuracy']:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    with atomic_directory(out_dir) as staging:
        write_json(staging / "robustness.json", table)
    return find_robustness(out_dir)


def find_robustness(directory: Path) -> Robustness | None:
    summary = directory / "robustness.json"
    return read_whole(
        lambda: Robustness(directory, file_digest(summary)) if "corruptions" in read_json(summary) else None
    )
