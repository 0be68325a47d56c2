"""The tasks of `flows/feedback_flow.py`: gather the new answers with their images, write the inbox,
record what became of each answer, publish the report.

They read the data directory's current state (the feedback log, the prediction log, what was
exported), so none is cached: every run looks again."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cifarflow.feedback.answers import latest, read_answers
from cifarflow.feedback.corrections import (
    ExportPlan,
    Ready,
    pending,
    plan_export,
    read_exported,
    record_handled,
    screening_verdicts,
    unfinished_exports,
    write_inbox,
)
from cifarflow.feedback.corrections_report import render_report
from cifarflow.feedback.queue import read_pixels
from cifarflow.files import atomic_path, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import log_files, merges_paused, readable
from cifarflow.orchestration.artifacts import publish_table


@task(name="gather-answers", cache_policy=NO_CACHE)
def gather_answers(layout: DataLayout) -> tuple[ExportPlan, dict[str, dict[str, str]]]:
    """The answers not handled yet, each with the pixels the model saw, sorted into ready, held, lost;
    and what earlier runs handled."""
    logger = get_run_logger()
    current = latest(read_answers(layout.feedback_answers, warn=logger.warning))
    exported = read_exported(layout.feedback_exported, layout.feedback_exports)
    todo = pending(current, exported)
    with merges_paused(layout.prediction_log):  # the files listed stay put while their pixels are read
        files = log_files(layout.prediction_log)
        kept = readable(files, warn=logger.warning)
        pixels = read_pixels(kept, [a.prediction_id for a in todo], warn=logger.warning) if todo else {}
    plan = plan_export(current, exported, pixels, whole_log=len(kept) == len(files))
    logger.info(
        "%d answers, %d new since the last export: %d ready, %d images held (conflicting answers), %d lost, "
        "%d waiting (a log file could not be read)",
        len(current),
        len(todo),
        len(plan.ready),
        len(plan.held),
        len(plan.lost),
        len(plan.waiting),
    )
    return plan, exported


@task(name="remove-unfinished-exports", cache_policy=NO_CACHE)
def remove_unfinished_exports(layout: DataLayout, exported: dict[str, dict[str, str]]) -> list[Path]:
    """Undo what a kill left before an export's journal was written (an inbox, nothing else): the
    folders removed, each logged."""
    stale = unfinished_exports(layout.feedback_exports, exported)
    for folder in stale:
        shutil.rmtree(folder)
        get_run_logger().warning("removed %s: an export killed before it began (nothing of it was added)", folder)
    return stale


@task(name="write-feedback-inbox", cache_policy=NO_CACHE)
def write_feedback_inbox(inbox: Path, ready: list[Ready]) -> Path:
    """The ready answers as an add-images inbox: `<class>/<prediction_id>.png`, the exact pixels."""
    written = write_inbox(inbox, ready)
    get_run_logger().info("wrote %d images to %s", len(written), inbox)
    return inbox


@task(name="record-handled-answers", cache_policy=NO_CACHE)
def record_outcome(
    layout: DataLayout,
    exported: dict[str, dict[str, str]],
    export_id: str,
    plan: ExportPlan,
    addition: dict[str, Any] | None,
) -> dict[str, tuple[str, str]]:
    """Each ready answer's verdict (from the screening), written with the lost ones to exported.json."""
    verdicts = screening_verdicts(addition, plan.ready) if addition else {}
    record_handled(layout.feedback_exported, exported, export_id, plan.ready, verdicts, plan.lost)
    return verdicts


@task(name="publish-feedback-report", cache_policy=NO_CACHE)
def publish_feedback_report(directory: Path, summary: dict[str, Any]) -> Path:
    """summary.json and report.md in the export's folder, and the report in the UI."""
    write_json(directory / "summary.json", summary)
    markdown = render_report(summary)
    with atomic_path(directory / "report.md") as tmp:
        tmp.write_text(markdown)
    create_markdown_artifact(markdown=markdown, key="cifar10-feedback-export", description=summary["headline"])
    rows = [{"verdict": verdict, "answers": count} for verdict, count in summary["counts"].items()]
    publish_table(table=rows, key="cifar10-feedback-verdicts", description=summary["headline"])
    return directory / "summary.json"
