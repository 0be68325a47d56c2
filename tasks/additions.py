"""The tasks of `flows/add_images.py`: scan the inbox, screen its images, write the batch, publish.

They read and write the data directory's current state (batches, the dataset version), so none of
them is cached: every run looks again. Screening retries nothing: a bad image is a result, not an error.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cifarflow.data.versions import (
    BatchInfo,
    DatasetVersion,
    current_version,
    new_batch_id,
    withdraw_batch,
    write_batch,
)
from cifarflow.files import text_digest
from cifarflow.intake.inbox import Inbox, scan_inbox
from cifarflow.intake.screen import Screening, batch_table, load_reference, screen_inbox
from cifarflow.intake.summary import write_summary
from cifarflow.layout import DataLayout
from cifarflow.orchestration.artifacts import publish_addition
from cifarflow.orchestration.events import emit_dataset_updated
from cifarflow.paths import printable


@task(name="scan-inbox", cache_policy=NO_CACHE)
def scan(inbox: Path, label_names: list[str]) -> Inbox:
    """List INBOX/<class>/… files: candidates, and files rejected for their folder or extension."""
    found = scan_inbox(inbox, label_names)
    get_run_logger().info("%s: %d files, %d candidates", inbox, found.files, len(found.candidates))
    return found


@task(name="screen-images", cache_policy=NO_CACHE)  # not the pipeline's validate stage: this screens one inbox
def screen_images(inbox: Inbox, layout: DataLayout) -> Screening:
    """Decode each candidate; refuse broken files and test-set copies; set aside duplicates."""
    logger = get_run_logger()
    reference = load_reference(layout)
    tests, known = len(reference.leak_index.image_ids), len(reference.known)
    logger.info("checking against %d test images and %d training images", tests, known)
    progress = create_progress_artifact(
        progress=0.0, key="cifar10-images-checked", description=f"Checking {len(inbox.candidates)} images"
    )
    result = screen_inbox(
        inbox,
        reference,
        log=logger.info,
        on_progress=lambda done, total: update_progress_artifact(progress, 100 * done / total),
    )
    logger.info("%d new, %d duplicates, %d rejected", *map(len, (result.accepted, result.duplicates, result.rejected)))
    return result


@task(name="write-batch", cache_policy=NO_CACHE)  # no retries: its id has the time in it, a retry would add twice
def write(
    layout: DataLayout, screening: Screening, label_names: list[str], inbox: Path, origin: dict | None = None
) -> BatchInfo | None:
    """Write the accepted images as one immutable batch (whole or not at all); None if nothing is new.
    `origin`, when given, is kept in the batch record."""
    if not screening.accepted:
        return None
    batch_id = new_batch_id(text_digest([a.digest for a in screening.accepted]))
    record = {"inbox": printable(inbox.resolve()), "class_counts": screening.class_counts}
    record |= {"origin": origin} if origin else {}
    batch = write_batch(layout, batch_id, batch_table(screening.accepted, label_names), record)
    get_run_logger().info("wrote batch %s: %d images", batch.batch_id, batch.rows)
    return batch


@task(name="publish-addition", cache_policy=NO_CACHE)
def publish_addition_report(layout: DataLayout, summary: dict, screening: Screening, before: DatasetVersion) -> Path:
    """Write summary.json + report.md, publish them to the UI, and announce a new dataset version."""
    path = write_summary(
        layout.additions_reports / summary["addition_id"], summary, [a.pixels for a in screening.accepted]
    )
    publish_addition(summary, path)
    if summary["dataset_version"] != before.version:
        emit_dataset_updated(str(layout.root), summary)
        get_run_logger().info("emitted cifar10.dataset.updated for version %s", summary["dataset_version"])
    return path


@task(name="read-dataset-version", cache_policy=NO_CACHE)
def read_version(layout: DataLayout) -> DatasetVersion:
    """The dataset version before this run changes anything."""
    return current_version(layout)


@task(name="withdraw-batch", cache_policy=NO_CACHE)
def withdraw(layout: DataLayout, batch_id: str) -> Path:
    """Move a batch out of the training data (kept in batches-withdrawn/)."""
    moved = withdraw_batch(layout, batch_id)
    get_run_logger().info("withdrew %s (kept in %s)", batch_id, moved)
    return moved
