"""Where everything lives under the data directory: the one place paths come from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class _Under:
    """A path below the layout's root: `raw = _Under("raw", about=…)` makes `layout.raw` be `layout.root / "raw"`;
    `about` says what lives there (docs/reference/data-dir.md shows it)."""

    def __init__(self, *parts: str, about: str) -> None:
        self.parts, self.about = parts, about

    def __get__(self, layout: DataLayout, owner: type) -> Path:
        return layout.root.joinpath(*self.parts)


class _Keyed(_Under):
    """A folder per key: `model_dir = _Keyed("models", about=…)` makes `layout.model_dir(key)` `layout.models / key`;
    `key` names what the key is."""

    def __init__(self, *parts: str, about: str, key: str = "key") -> None:
        super().__init__(*parts, about=about)
        self.key = key

    def __get__(self, layout: DataLayout, owner: type) -> Callable[[str], Path]:
        return super().__get__(layout, owner).joinpath


@dataclass(frozen=True)
class DataLayout:
    root: Path

    raw = _Under("raw", about="archives downloaded from a URL, verified by checksum (a local one is read in place)")
    local_archive = _Under(
        "cache",
        "cifar-10-python.tar.gz",
        about="CIFAR-10 put here once (`make data/cache/cifar-10-python.tar.gz` builds it): a new data dir's source",
    )
    parquet = _Under(
        "parquet", about="the ingested images as Parquet shards: `train/` and `test/`, `part-NNNNN.parquet`"
    )
    shard_manifest = _Under("parquet", "manifest.json", about="the shards' sha256, source, split and image size")
    batches = _Under("batches", about="images added after ingest (flows/add_images.py), one immutable folder per batch")
    withdrawn_batches = _Under("batches-withdrawn", about="kept, not deleted, so a withdrawal can be undone")
    additions_reports = _Under("reports", "additions", about="a folder per add_images run: summary.json, report.md")
    intake_lock = _Under(".intake.lock", about="one add_images at a time: each deduplicates against the batches there")
    intake_journal = _Under(".intake-journal.json", about="an unfinished add_images or withdraw run (journal.py)")

    features = _Under("features", about="the preprocess stage's outputs, a folder per key")
    models = _Under("models", about="the train stage's outputs, a folder per key")
    evaluations = _Under("evaluations", about="the evaluate stage's outputs, a folder per key")
    # --8<-- [start:calibrations]
    calibrations = _Under("calibrations", about="the calibrate stage's outputs, a folder per key")
    # --8<-- [end:calibrations]
    robustness = _Under("robustness", about="the robustness stage's outputs, a folder per key")
    reports = _Under("reports", about="a folder per pipeline run (`<run-name>`): report.md, metrics.json, model card")
    registry = _Under(
        "registry", about="the model registry: every promoted version and the champion alias (cifarflow/registry/)"
    )
    predictions = _Under("predictions", about="batch prediction outputs (flows/predict_flow.py), a folder per run")

    monitoring = _Under(
        "monitoring", about="what the champion was asked, and the monitor's verdicts (cifarflow/monitoring/)"
    )
    prediction_log = _Under(
        "log", "predictions.sqlite", about="scored images and reviewers' answers (cifarflow/monitoring/log.py)"
    )
    monitor_reports = _Under("monitoring", "reports", about="a folder per monitor run: monitor.json, report.md, plots")
    monitor_references = _Under("monitoring", "references", about="per model: the test set's features and predictions")
    monitor_state = _Under("monitoring", "state.json", about="the last log seq incremental monitor runs have judged")
    monitor_lock = _Under("monitoring", ".monitor.lock", about="one monitor run at a time per data dir")
    monitor_journal = _Under("monitoring", ".run-journal.json", about="an unfinished incremental monitor run")
    mlflow_db = _Under("mlflow.db", about="the MLflow runs of this data dir, its default tracking store (tracking.py)")
    mlflow_artifacts = _Under("mlflow-artifacts", about="their artifacts (the report folders as logged)")
    feedback = _Under("feedback", about="what reviewers answered, and what the feedback flow made of it")
    feedback_exported = _Under(
        "feedback", "exported.json", about="the answer of each prediction handled, and its verdict"
    )
    feedback_exports = _Under(
        "feedback", "exports", about="a folder per feedback run with answers: inbox, summary.json"
    )
    feedback_lock = _Under("feedback", ".export.lock", about="one feedback export at a time")
    feedback_journal = _Under("feedback", ".export-journal.json", about="an unfinished feedback export (journal.py)")

    latest_report = _Under("reports", "latest", about="a relative link to the newest run's report folder")
    sweeps = _Under("reports", "sweeps", about="a folder per sweep (`<name>`): the leaderboard of its trials")
    stage_state = _Under(".stage-state", about="each stage's last cache key and its inputs (for --plan and --stages)")
    digest_memo = _Under(".stage-state", "digests.json", about="sha256 of verified files by identity (files.py)")
    # apart from digests.json, as every stage reads the outputs' memo, and a folder's holds an entry per image
    source_memo = _Under(".stage-state", "source-digests.json", about="the same for a folder source's files")
    lock_file = _Under(".pipeline.lock", about="one pipeline run, sweep or withdrawal at a time (--lock-timeout)")

    split_dir = _Keyed("parquet", key="split", about="one split's shards: `train` or `test`")
    batch_dir = _Keyed("batches", key="batch id", about="one added batch: part-00000.parquet and batch.json")
    validation_dir = _Keyed("validations", about="the validate stage's output: dataset.json, validation.json/.md")
    feature_dir = _Keyed("features", about="the preprocess stage's output: pixels, labels, the fitted transform")
    model_dir = _Keyed("models", about="the train stage's output: model.keras, history.json, train.json")
    evaluation_dir = _Keyed("evaluations", about="the evaluate stage's output: metrics.json, probabilities, plots")
    # --8<-- [start:calibration-dir]
    calibration_dir = _Keyed("calibrations", about="the calibrate stage's output: calibration.json, reliability.png")
    # --8<-- [end:calibration-dir]
    robustness_dir = _Keyed("robustness", about="the robustness stage's output: robustness.json")
