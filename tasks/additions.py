"""The tasks of `flows/add_images.py`, none cached (each reads the data dir's current state) nor retried (a bad
image is a result, not an error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from cifarflow.data import dataset_versions
from cifarflow.data.shards import read_shards, shard_files
from cifarflow.intake.batch_report import write_summary
from cifarflow.intake.screen import Inbox, Screening, batch_table, load_reference, scan_inbox, screen_inbox
from cifarflow.journal import damaged, end, unfinished
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


@task(name="write-batch", cache_policy=NO_CACHE)  # no retries: the flow's journal names this one write
def write(
    layout: DataLayout,
    batch_id: str,
    screening: Screening,
    label_names: list[str],
    inbox: Path,
    origin: dict | None = None,
) -> dataset_versions.BatchInfo:
    """Write the accepted images as the immutable batch `batch_id`, whole or not at all, with `origin`."""
    record = {"inbox": printable(inbox.resolve()), "class_counts": screening.class_counts}
    record |= {"origin": origin} if origin else {}
    batch = dataset_versions.write_batch(layout, batch_id, batch_table(screening.accepted, label_names), record)
    get_run_logger().info("wrote batch %s: %d images", batch.batch_id, batch.rows)
    return batch


@task(name="publish-addition", cache_policy=NO_CACHE)
def publish_addition_report(layout: DataLayout, summary: dict, added_images: list[np.ndarray]) -> Path:
    """Write summary.json (with the data's current version) and report.md, publish them, and announce a new
    dataset version."""
    after = dataset_versions.current_version(layout)
    summary = summary | {"dataset_version": after.version, "train_images": after.train_images}
    path = write_summary(layout.additions_reports / summary["addition_id"], summary, added_images)
    publish_addition(summary, path)
    if summary["dataset_version"] != summary["previous_dataset_version"]:
        emit_dataset_updated(str(layout.root), summary)
        get_run_logger().info("emitted cifar10.dataset.updated for version %s", summary["dataset_version"])
    return path


def announce_withdrawal(
    layout: DataLayout, batch_id: str, previous_version: str, after: dataset_versions.DatasetVersion
) -> None:
    """cifar10.dataset.updated for the withdrawal of `batch_id`, which moved the data from `previous_version`."""
    facts = {"dataset_version": after.version, "previous_dataset_version": previous_version, "withdrawn": batch_id}
    emit_dataset_updated(str(layout.root), facts | {"train_images": after.train_images})


@task(name="finish-killed-run", cache_policy=NO_CACHE)
def finish_killed_run(layout: DataLayout) -> str | None:
    """Under the intake lock: finish the killed run the journal names if its batch had moved, else undo it; the
    sentence saying which, None when no run was killed; PipelineInputError for a damaged journal."""
    dataset_versions.remove_unfinished(layout)
    killed = unfinished(layout.intake_journal, ("run", "batch_id"))
    if killed is None:
        return None
    needs = {"add-images": "summary", "withdraw": "previous_dataset_version"}.get(str(killed["run"]))
    if needs not in killed:  # None: a run of no known kind
        raise damaged(layout.intake_journal, f"no `{needs}` field" if needs else f"`run` is {killed['run']!r}")
    batch_id = killed["batch_id"]
    active = (layout.batch_dir(batch_id) / dataset_versions.BATCH_FILE).is_file()
    if killed["run"] == "withdraw" and active:
        message = f"undid the withdrawal of {batch_id} killed before the batch moved: it is still in the training data"
    elif killed["run"] == "withdraw":
        announce_withdrawal(
            layout, batch_id, killed["previous_dataset_version"], dataset_versions.current_version(layout)
        )
        message = (
            f"finished the withdrawal of {batch_id} killed before it was announced: cifar10.dataset.updated emitted"
        )
    elif not active:
        message = f"undid the add_images run killed before its batch {batch_id} was in place: nothing of it was added"
    else:
        batch = dataset_versions.read_batch(layout.batch_dir(batch_id))
        images, _ = read_shards(*shard_files(batch.directory, dataset_versions.batch_shards(batch)))
        publish_addition_report.fn(layout, killed["summary"], list(images))
        message = (
            f"finished the add_images run killed after writing batch {batch_id}: its report written, "
            "cifar10.dataset.updated emitted"
        )
    get_run_logger().warning(message)
    end(layout.intake_journal)
    return message


@task(name="withdraw-batch", cache_policy=NO_CACHE)
def withdraw(layout: DataLayout, batch_id: str) -> Path:
    """Move a batch out of the training data (kept in batches-withdrawn/)."""
    moved = dataset_versions.withdraw_batch(layout, batch_id)
    get_run_logger().info("withdrew %s (kept in %s)", batch_id, moved)
    return moved
