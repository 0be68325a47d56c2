"""Build one registry version in `.staging/`: copy the model and its scores, export it (with the
record's calibration temperature), smoke-test the export in a fresh process. Only a version that
passed is committed (renamed into `versions/`); anything else is deleted, so a failed export or
smoke test leaves the registry exactly as it was."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarflow.files import file_digest, write_json
from cifarflow.registry.export import export_model
from cifarflow.registry.model_versions import discard_staging
from cifarflow.registry.records import VersionRecord
from cifarflow.registry.smoke import SmokeResult, smoke_test


@dataclass(frozen=True)
class Canary:
    """The canary images and the probabilities evaluation measured for them with the `.keras` model."""

    pixels: np.ndarray  # (N, 32, 32, 3) uint8
    probabilities: np.ndarray  # (N, classes)


class VersionRejected(Exception):
    """The export failed or did not pass its smoke test; nothing was registered."""

    def __init__(self, reason: str, smoke: SmokeResult | None = None):
        super().__init__(reason)
        self.smoke = smoke


@dataclass(frozen=True)
class StagedVersion:
    name: str
    directory: Path  # in .staging/, complete, ready for `store.commit_version`
    smoke: SmokeResult


def stage_version(
    staging: Path,
    name: str,
    model_path: Path,
    record: VersionRecord,
    metrics: dict[str, Any],
    predictions: np.ndarray,
    labels: np.ndarray,
    canary: Canary,
    log=print,
) -> StagedVersion:
    """Fill the empty `staging` directory with version `name` (`record` is its version.json, less its
    name and smoke test); VersionRejected (after deleting it) says why not."""
    try:
        shutil.copy2(model_path, staging / "model.keras")
        if file_digest(staging / "model.keras") != record.model_id:
            raise ValueError(f"{model_path} changed: it no longer has the sha256 {record.model_id} it was scored with")
        np.save(staging / "predictions.npy", np.asarray(predictions).astype(np.int16))
        np.save(staging / "labels.npy", np.asarray(labels).astype(np.int16))
        write_json(staging / "metrics.json", metrics)
        try:
            export_model(
                staging / "model.keras",
                record.preset,
                list(record.label_names),
                staging / "export",
                record.temperature,
            )
        except Exception as error:  # any failure to trace or write the SavedModel: not registrable
            raise VersionRejected(f"the export failed: {type(error).__name__}: {error}") from error
        log(f"exported {name} as a SavedModel; smoke-testing it in a fresh process on {len(canary.pixels)} images")
        smoke = smoke_test(staging / "export", canary.pixels, canary.probabilities)
        write_json(staging / "smoke.json", smoke.to_json())
        if not smoke.passed:
            raise VersionRejected(smoke.summary, smoke)
        write_json(staging / "version.json", replace(record, version=name, smoke=smoke.to_json()).to_json())
        return StagedVersion(name, staging, smoke)
    except BaseException:
        discard_staging(staging)
        raise
