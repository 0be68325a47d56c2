from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cifarflow.config import PipelineConfig
from cifarflow.data.ingest import IngestResult, ingest_source
from cifarflow.orchestration.runner import stage_task

SHOW_AFTER_S = 2.0  # an ingest done sooner shows no bar
UPDATE_EVERY_S = 1.0  # the artifact's and the bar's refresh at most


@stage_task("ingest", retries=3, delay=2, task_run_name="ingest")
def ingest(config: PipelineConfig, key: str) -> IngestResult:
    """Read the source (the CIFAR-10 archive, fetched and verified, or an image folder); write Parquet shards +
    manifest, with a progress bar and a progress artifact while a folder's files decode."""
    logger = get_run_logger()
    with DecodeProgress() as progress:
        result = ingest_source(config, cache_key=key, log=logger.info, progress=progress)
    logger.info("ingested %d images (train %d, test %d)", sum(result.rows.values()), *result.rows.values())
    return result


class DecodeProgress:
    """`progress(done, total)` files decoded: once the ingest has run SHOW_AFTER_S, a terminal bar (rich) and the
    task run's progress artifact (percent), refreshed at most every UPDATE_EVERY_S and closed at 100 %."""

    def __init__(self) -> None:
        self.started, self.shown_at = time.monotonic(), 0.0
        self.bar: Progress | None = None
        self.task = self.artifact = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < SHOW_AFTER_S or (now - self.shown_at < UPDATE_EVERY_S and done < total):
            return
        self.shown_at, percent = now, 100.0 * done / max(total, 1)
        if self.bar is None:
            columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(*columns, auto_refresh=False)
            self.bar.start()
            self.task = self.bar.add_task("decode", total=total)
            self.artifact = create_progress_artifact(percent, description=f"decoding {total:,} images")
        else:
            update_progress_artifact(self.artifact, percent)
        self.bar.update(self.task, completed=done, total=total, refresh=True)

    def __enter__(self) -> DecodeProgress:
        return self

    def __exit__(self, *failure: object) -> None:
        if self.bar is not None:
            self.bar.stop()
