"""Build the next registry version in `.staging/` (model, scores, SavedModel and ONNX exports, smoke test in fresh
processes) and make it the champion; a failed export or smoke test leaves the registry as it was."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import file_digest, write_json
from cifarflow.registry import onnx_export, store
from cifarflow.registry.saved_model import SmokeResult, export_model, smoke_test


@dataclass(frozen=True)
class Canary:
    """The canary images and the probabilities evaluation measured for them with the `.keras` model."""

    pixels: np.ndarray  # (N, S, S, 3) uint8
    probabilities: np.ndarray  # (N, classes)


class VersionRejected(Exception):
    """The export failed or did not pass its smoke test (`smoke`, if it ran); nothing was registered."""

    def __init__(self, reason: str, smoke: SmokeResult | None = None):
        super().__init__(reason)
        self.smoke = smoke


@dataclass(frozen=True)
class StagedVersion:
    name: str
    directory: Path  # in .staging/, complete, ready for `store.commit_version`
    smoke: SmokeResult


def stage_next_version(
    registry: Path,
    model_path: Path,
    record: store.VersionRecord,
    metrics: dict[str, Any],
    predictions: np.ndarray,
    labels: np.ndarray,
    canary: Canary,
    log=print,
    model_card: Callable[[str], str] | None = None,
) -> StagedVersion:
    """Build the next version in `.staging/` (`record`: its version.json less name and smoke test), registered by
    `make_champion` (`model_card`: README.md for the version's name); VersionRejected, or ValueError when the model
    file changed since scored (build deleted)."""
    name = store.next_name(registry)
    staging = store.new_staging(registry, name, log)
    try:
        shutil.copy2(model_path, staging / "model.keras")
        if file_digest(staging / "model.keras") != record.model_id:
            raise ValueError(f"{model_path} changed: it no longer has the sha256 {record.model_id} it was scored with")
        np.save(staging / "predictions.npy", np.asarray(predictions).astype(np.int16))
        np.save(staging / "labels.npy", np.asarray(labels).astype(np.int16))
        write_json(staging / "metrics.json", metrics)
        if model_card is not None:
            (staging / "README.md").write_text(model_card(name))
        try:
            names, export = list(record.label_names), staging / "export"
            export_model(staging / "model.keras", record.preset, names, export, record.temperature, record.dataset)
        except Exception as error:  # any failure to trace or write the SavedModel: not registrable
            raise VersionRejected(f"the export failed: {type(error).__name__}: {error}") from error
        try:
            onnx = onnx_export.export_onnx(export, staging / onnx_export.FILE)
        except Exception as error:  # tf2onnx could not convert it: not registrable
            raise VersionRejected(f"the ONNX conversion failed: {type(error).__name__}: {error}") from error
        log(f"exported {name} (SavedModel, ONNX); smoke-testing it in fresh processes on {len(canary.pixels)} images")
        smoke = smoke_test(export, canary.pixels, canary.probabilities, onnx=onnx)
        write_json(staging / "smoke.json", smoke.to_json())
        if not smoke.passed:
            raise VersionRejected(smoke.summary, smoke)
        write_json(staging / "version.json", replace(record, version=name, smoke=smoke.to_json()).to_json())
        return StagedVersion(name, staging, smoke)
    except BaseException:
        store.discard_staging(staging)
        raise


def make_champion(
    registry: Path, candidate: StagedVersion | store.Version, reason: str, expected_from: object = store.UNCHECKED
) -> store.Version:
    """Commit a staged version and make it the champion (`store.move_alias`: AliasMoved, the version stays)."""
    if isinstance(candidate, StagedVersion):
        candidate = store.commit_version(registry, candidate.directory, candidate.name)
    store.move_alias(registry, candidate.name, by="promotion", reason=reason, expected_from=expected_from)
    return candidate
