"""A model registry built the way a promotion builds it (stage → export → smoke test in a fresh
process → commit → move the alias), from tiny random-weight `classic` networks: seconds, not a training run.

Each version's network has its own seed, so two versions predict differently; `canary_pixels` are
the images whose probabilities the smoke test compares."""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.synthetic import CLASSES

CANARY = 20  # images in the smoke test's canary set here (the product uses 1,000)


def canary_pixels(seed: int = 0, count: int = CANARY, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def tiny_model_file(path: Path, seed: int, label_names=CLASSES, image_size: int = 32) -> Path:
    """A `classic`-preset network with random weights (uint8 pixels in, the unit normalization inside)."""
    import keras

    from cifarflow.data.transform import Normalization
    from cifarflow.models.presets import get_preset

    keras.utils.set_random_seed(seed)
    unit = Normalization("unit", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0))
    model = get_preset("classic").build(unit, num_classes=len(label_names), image_size=image_size, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def version_inputs(model_path: Path, seed: int, test_images: int = 100, label_names=CLASSES, image_size: int = 32):
    """(record, metrics, predictions, labels, canary) for `stage_next_version`, as a promotion would pass them
    (`record` a `VersionRecord`)."""
    from cifarflow.files import file_digest
    from cifarflow.models.presets import get_preset
    from cifarflow.registry.build import Canary
    from cifarflow.registry.store import VersionRecord

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(label_names), test_images)
    predictions = np.where(rng.random(test_images) < 0.5, labels, rng.integers(0, len(label_names), test_images))
    accuracy = float(np.mean(predictions == labels))
    pixels = canary_pixels(seed, side=image_size)
    preset = get_preset("classic")
    probabilities = preset.predict(preset.load(model_path), pixels)
    record = VersionRecord(
        model_id=file_digest(model_path),
        run_name=f"test-run-{seed}",
        preset="classic",
        accuracy=accuracy,
        label_names=tuple(label_names),
        image_size=image_size,
        dataset_version=f"dataset-{seed}",
        batch_ids=(),
        normalization="unit",
        test_set_sha256="t" * 64,
        test_images=test_images,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        replaced=None,
        decision="promoted: test fixture",
        source_model=str(model_path),
    )
    metrics = evaluation_metrics(predictions, labels, label_names)
    return record, metrics, predictions, labels, Canary(pixels, probabilities)


def evaluation_metrics(predictions: np.ndarray, labels: np.ndarray, label_names=CLASSES) -> dict:
    """metrics.json as evaluation writes it, for these predicted labels (a promotion's report reads it)."""
    from cifarflow.evaluation.evaluate import compute_metrics

    probabilities = np.full((len(predictions), len(label_names)), 0.09 / (len(label_names) - 1), np.float32)
    probabilities[np.arange(len(predictions)), predictions] = 0.91
    return compute_metrics(labels, probabilities, list(label_names))


def report_facts(evaluation: dict, image_size: int = 32, model_id: str = "0" * 64) -> tuple[dict, dict]:
    """(model_card.json, metrics.json) as the report stage writes them around `evaluation` (`evaluation_metrics`),
    with made-up, well-formed calibration and robustness figures: what a promotion renders a version's card from."""
    from cifarflow.reporting.report import build_metrics

    confusion = np.asarray(evaluation["confusion_matrix"])
    images, accuracy = int(confusion.sum()), evaluation["test_accuracy"]
    scores = {"ece": 0.04, "nll": 1.1, "brier": 0.5, "mean_confidence": accuracy, "accuracy": accuracy}
    calibration = {
        "temperature": 1.5,
        "fitted": {"temperature": 1.5, "half_temperatures": {"A": 1.4, "B": 1.6}},
        "unsupported": [],
        "images": images,
        "errors": images - int(np.trace(confusion)),
        "bins": 15,
        "halves": {"A": images // 2, "B": images - images // 2},
        "after_is": "cross-fitted: each half scaled with the temperature fitted on the other half",
        "before": scores | {"ece": 0.16, "nll": 1.4},
        "after": scores,
    }
    fall = {"gaussian_noise": (0.9, 0.7, 0.5), "blur": (0.95, 0.85, 0.75), "contrast": (1.0, 0.9, 0.8)}
    corruptions = {
        name: {"accuracy": [accuracy * f for f in factors], "ece": [0.05] * 3, "severities": ["mild", "middle", "hard"]}
        for name, factors in fall.items()
    }
    every = [a for entry in corruptions.values() for a in entry["accuracy"]]
    robustness = {"images": images, "clean_accuracy": accuracy, "clean_ece": 0.04, "corruptions": corruptions}
    robustness |= {"mean_corruption_accuracy": float(np.mean(every)), "mean_corruption_ece": 0.05}
    source = {"kind": "folder", "uri": "/photos/synthetic"}
    card = {
        "run_name": "test-run",
        "model": "classic",
        "params": 1234,
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.001,
        "seed": 42,
        "normalization": {"kind": "unit", "mean": [0.0] * 3, "std": [1.0] * 3},
        "train_seconds": 1.5,
        "source": source["uri"],
        "dataset_name": "synthetic",
        "label_names": list(evaluation["class_names"]),
        "image_size": image_size,
        "dataset": {"source": source, "split": {"method": "held-out", "test_fraction": 0.2, "split_seed": 0}},
        "source_sha256": "s" * 64,
        "dataset_sha256": "d" * 64,
        "dataset_version": "dataset-test",
        "train_images": 4 * images,
        "lineage": {"base": {"images": 4 * images}, "batches": [], "train_images": 4 * images},
        "data_warnings": [],
        "warm_start": None,
        "model_sha256": model_id,
        "created": "2026-01-01T00:00:00+00:00",
        "libraries": {"python": "3.11"},
    }
    return card, build_metrics(evaluation, card, calibration, robustness)


def build_two_versions(data_dir: Path) -> Path:
    """<data_dir>/registry with v1 (seed 1) and v2 (seed 2, the champion); what the session's
    `two_versions` fixture builds once."""
    for seed in (1, 2):
        add_version(data_dir / "registry", seed, data_dir.parent / "scratch")
    return data_dir


def copy_data_dir(template: Path, target: Path) -> Path:
    """A private copy of a fixture data dir, safe to change."""
    import shutil

    shutil.copytree(template, target, symlinks=True)
    return target


def add_version(
    registry: Path, seed: int, scratch: Path, reason: str = "promoted: test fixture", label_names=CLASSES, image_size=32
):
    """Register a new version built from a fresh random network (of `label_names` at `image_size`) and make it the
    champion."""
    from cifarflow.registry.build import make_champion, stage_next_version

    model_path = tiny_model_file(scratch / f"model-{seed}" / "model.keras", seed, label_names, image_size)
    from cifarflow.reporting.model_card import render_model_card

    inputs = version_inputs(model_path, seed, label_names=label_names, image_size=image_size)
    card, metrics = report_facts(inputs[1], image_size, inputs[0].model_id)
    readme = functools.partial(render_model_card, card, metrics)
    staged = stage_next_version(registry, model_path, *inputs, log=lambda _: None, model_card=readme)
    return make_champion(registry, staged, reason=reason)


def reseal(version: Path) -> None:
    """Seal a version's files as they are now (`files` and `record_sha256`): damage no file check sees, as
    if it was registered so, which only loading the export finds."""
    import json

    from cifarflow.files import file_digest
    from cifarflow.registry import store

    record = json.loads((version / "version.json").read_text())
    record["files"] = {
        path.relative_to(version).as_posix(): {"size": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(version.rglob("*"))
        if path.is_file() and path.name != "version.json"
    }
    (version / "version.json").write_text(json.dumps(record | {"record_sha256": store.record_digest(record)}))


def snapshot(root: Path, mtimes: bool = False) -> dict[str, tuple]:
    """Every path under `root`: file bytes (and modification times, with `mtimes`), symlink targets,
    directories; two snapshots are equal when nothing under `root` was written."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = ("link", os.readlink(path))
            elif path.is_file():
                tree[key] = ("file", path.read_bytes()) + ((path.stat().st_mtime_ns,) if mtimes else ())
            else:
                tree[key] = ("dir",)
    return tree
