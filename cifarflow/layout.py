"""Where everything lives under the data directory: the one place paths come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def raw(self) -> Path:
        """Downloaded or copied source archives (immutable once verified)."""
        return self.root / "raw"

    @property
    def parquet(self) -> Path:
        return self.root / "parquet"

    @property
    def shard_manifest(self) -> Path:
        return self.parquet / "manifest.json"

    @property
    def batches(self) -> Path:
        """Images added after ingest (`flows/add_images.py`): one immutable directory per batch."""
        return self.root / "batches"

    @property
    def withdrawn_batches(self) -> Path:
        """Batches taken out of the training data, kept (not deleted) so a withdrawal can be undone."""
        return self.root / "batches-withdrawn"

    @property
    def validations(self) -> Path:
        """The validate stage's output per dataset version: the shard list, statistics and warnings."""
        return self.root / "validations"

    @property
    def additions_reports(self) -> Path:
        return self.reports / "additions"

    @property
    def intake_lock(self) -> Path:
        """One `add_images` at a time: each one deduplicates against the batches already there."""
        return self.root / ".intake.lock"

    @property
    def intake_journal(self) -> Path:
        """What an unfinished `add_images` or withdraw run was doing (cifarflow/journal.py)."""
        return self.root / ".intake-journal.json"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    @property
    def calibrations(self) -> Path:
        return self.root / "calibrations"

    @property
    def robustness(self) -> Path:
        return self.root / "robustness"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def registry(self) -> Path:
        """The model registry: numbered versions, the `champion` alias, decisions (cifarflow/registry/store.py)."""
        return self.root / "registry"

    @property
    def predictions(self) -> Path:
        """Batch prediction outputs (flows/predict_flow.py), one folder per run unless --out says otherwise."""
        return self.root / "predictions"

    @property
    def monitoring(self) -> Path:
        """What the champion was asked, and the monitor's verdicts on it (cifarflow/monitoring/)."""
        return self.root / "monitoring"

    @property
    def prediction_log(self) -> Path:
        """Every scored image with its answer, one Parquet file per flush, by UTC day (monitoring/log.py)."""
        return self.monitoring / "log"

    @property
    def monitor_reports(self) -> Path:
        """One folder per monitor run: monitor.json, report.md and its plots."""
        return self.monitoring / "reports"

    @property
    def monitor_references(self) -> Path:
        """Per model: the test set's features and predictions the monitor compares windows with."""
        return self.monitoring / "references"

    @property
    def monitor_state(self) -> Path:
        """Which prediction-log files incremental monitor runs have judged (cifarflow/monitoring/monitor.py)."""
        return self.monitoring / "state.json"

    @property
    def monitor_lock(self) -> Path:
        """One monitor run at a time per data dir: a second waits."""
        return self.monitoring / ".monitor.lock"

    @property
    def monitor_journal(self) -> Path:
        """What an unfinished incremental monitor run was doing: its report and files (cifarflow/journal.py)."""
        return self.monitoring / ".run-journal.json"

    @property
    def monitor_merge_journal(self) -> Path:
        """Which judged log files an unfinished merge was folding into their day.parquet (cifarflow/journal.py)."""
        return self.monitoring / ".merge-journal.json"

    @property
    def feedback(self) -> Path:
        """What reviewers answered, and what the feedback flow made of it (cifarflow/feedback/)."""
        return self.root / "feedback"

    @property
    def feedback_answers(self) -> Path:
        """Every answer, append-only, one JSON line each (cifarflow/feedback/answers.py)."""
        return self.feedback / "answers.jsonl"

    @property
    def feedback_exported(self) -> Path:
        """Which answer of each prediction the feedback flow has handled, and its verdict."""
        return self.feedback / "exported.json"

    @property
    def feedback_exports(self) -> Path:
        """One folder per feedback flow run that had answers: its inbox (the exact pixels) and summary.json."""
        return self.feedback / "exports"

    @property
    def feedback_lock(self) -> Path:
        """One feedback export at a time."""
        return self.feedback / ".export.lock"

    @property
    def feedback_journal(self) -> Path:
        """What an unfinished feedback export was doing: its id and its answers (cifarflow/journal.py)."""
        return self.feedback / ".export-journal.json"

    @property
    def latest_report(self) -> Path:
        return self.reports / "latest"

    @property
    def prefect_results(self) -> Path:
        """Prefect's cache records live beside the data they describe."""
        return self.root / ".prefect-results"

    @property
    def stage_state(self) -> Path:
        """Each stage's last cache key and what went into it (for --plan and --stages)."""
        return self.root / ".stage-state"

    @property
    def lock_file(self) -> Path:
        return self.root / ".pipeline.lock"

    def split_dir(self, split: str) -> Path:
        return self.parquet / split

    def batch_dir(self, batch_id: str) -> Path:
        return self.batches / batch_id

    def validation_dir(self, key: str) -> Path:
        return self.validations / key

    def feature_dir(self, key: str) -> Path:
        return self.features / key

    def model_dir(self, key: str) -> Path:
        return self.models / key

    def evaluation_dir(self, key: str) -> Path:
        return self.evaluations / key

    def calibration_dir(self, key: str) -> Path:
        return self.calibrations / key

    def robustness_dir(self, key: str) -> Path:
        return self.robustness / key
