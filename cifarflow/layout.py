"""Where everything lives under the data directory: the one place paths come from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class _Under:
    """A path below the layout's root: `raw = _Under("raw")` makes `layout.raw` be `layout.root / "raw"`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, layout: DataLayout, owner: type) -> Path:
        return layout.root.joinpath(*self.parts)


class _Keyed(_Under):
    """A folder per key: `model_dir = _Keyed("models")` makes `layout.model_dir(key)` be `layout.models / key`."""

    def __get__(self, layout: DataLayout, owner: type) -> Callable[[str], Path]:
        return super().__get__(layout, owner).joinpath


@dataclass(frozen=True)
class DataLayout:
    root: Path

    raw = _Under("raw")  # downloaded or copied source archives, immutable once verified
    parquet = _Under("parquet")
    shard_manifest = _Under("parquet", "manifest.json")
    batches = _Under("batches")  # images added after ingest (flows/add_images.py), one immutable folder per batch
    withdrawn_batches = _Under("batches-withdrawn")  # kept, not deleted, so a withdrawal can be undone
    additions_reports = _Under("reports", "additions")
    intake_lock = _Under(".intake.lock")  # one add_images at a time: each deduplicates against the batches there
    intake_journal = _Under(".intake-journal.json")  # an unfinished add_images or withdraw run (journal.py)

    features = _Under("features")
    models = _Under("models")
    evaluations = _Under("evaluations")
    calibrations = _Under("calibrations")
    robustness = _Under("robustness")
    reports = _Under("reports")
    registry = _Under("registry")  # the model registry (cifarflow/registry/)
    predictions = _Under("predictions")  # batch prediction outputs (flows/predict_flow.py), a folder per run

    monitoring = _Under("monitoring")  # what the champion was asked, and the monitor's verdicts (cifarflow/monitoring/)
    prediction_log = _Under("log", "predictions.sqlite")  # scored images and reviewers' answers (monitoring/log.py)
    monitor_reports = _Under("monitoring", "reports")  # a folder per monitor run: monitor.json, report.md, plots
    monitor_references = _Under("monitoring", "references")  # per model: the test set's features and predictions
    monitor_state = _Under("monitoring", "state.json")  # the last log seq incremental monitor runs have judged
    monitor_lock = _Under("monitoring", ".monitor.lock")  # one monitor run at a time per data dir
    monitor_journal = _Under("monitoring", ".run-journal.json")  # an unfinished incremental monitor run (journal.py)
    mlflow_db = _Under("mlflow.db")  # the MLflow runs of this data dir, its default tracking store (tracking.py)
    mlflow_artifacts = _Under("mlflow-artifacts")  # their artifacts (the report folders as logged)
    feedback = _Under("feedback")  # what reviewers answered, and what the feedback flow made of it
    feedback_exported = _Under("feedback", "exported.json")  # the answer of each prediction handled, and its verdict
    feedback_exports = _Under("feedback", "exports")  # a folder per feedback run with answers: inbox, summary.json
    feedback_lock = _Under("feedback", ".export.lock")  # one feedback export at a time
    feedback_journal = _Under("feedback", ".export-journal.json")  # an unfinished feedback export (journal.py)

    latest_report = _Under("reports", "latest")
    stage_state = _Under(".stage-state")  # each stage's last cache key and its inputs (for --plan and --stages)
    digest_memo = _Under(".stage-state", "digests.json")  # sha256 of verified files by identity (files.py)
    source_memo = _Under(".stage-state", "source-digests.json")  # the same for a folder source's files: apart, as
    # every stage reads the outputs' memo, and a folder's holds an entry per image
    lock_file = _Under(".pipeline.lock")

    split_dir = _Keyed("parquet")
    batch_dir = _Keyed("batches")
    validation_dir = _Keyed("validations")
    feature_dir = _Keyed("features")
    model_dir = _Keyed("models")
    evaluation_dir = _Keyed("evaluations")
    calibration_dir = _Keyed("calibrations")
    robustness_dir = _Keyed("robustness")
