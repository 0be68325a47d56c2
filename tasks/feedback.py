"""Tasks of flows/feedback_flow.py; none is cached: each reads the data dir's current state."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cifarflow.feedback import corrections
from cifarflow.feedback.answers import AnswerBook
from cifarflow.files import atomic_path, write_json
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import find
from cifarflow.orchestration.artifacts import publish_table


@task(name="gather-answers", cache_policy=NO_CACHE)
def gather_answers(layout: DataLayout) -> tuple[corrections.ExportPlan, dict[str, dict[str, str]]]:
    """The plan for the answers not handled yet (with the pixels the model saw); what earlier runs handled."""
    current = AnswerBook(layout.prediction_log).refresh()
    exported = corrections.read_exported(layout.feedback_exported, layout.feedback_exports)
    todo = corrections.pending(current, exported)
    found = find(layout.prediction_log, [a.prediction_id for a in todo]) if todo else {}
    plan = corrections.plan_export(current, exported, {pid: row.pixels for pid, row in found.items()})
    get_run_logger().info(
        "%d answers, %d new since the last export: %d ready, %d images held (conflicting answers), %d lost",
        *(len(current), len(todo), len(plan.ready), len(plan.held), len(plan.lost)),
    )
    return plan, exported


@task(name="remove-unfinished-exports", cache_policy=NO_CACHE)
def remove_unfinished_exports(layout: DataLayout, exported: dict[str, dict[str, str]]) -> None:
    """Remove the export folders a kill left before their journal was written (an inbox, nothing else)."""
    for folder in corrections.unfinished_exports(layout.feedback_exports, exported):
        shutil.rmtree(folder)
        get_run_logger().warning("removed %s: an export killed before it began (nothing of it was added)", folder)


@task(name="write-feedback-inbox", cache_policy=NO_CACHE)
def write_feedback_inbox(inbox: Path, ready: list[corrections.Ready]) -> None:
    corrections.write_inbox(inbox, ready)
    get_run_logger().info("wrote %d images to %s", len(ready), inbox)


@task(name="record-handled-answers", cache_policy=NO_CACHE)
def record_outcome(
    layout: DataLayout,
    exported: dict[str, dict[str, str]],
    export_id: str,
    plan: corrections.ExportPlan,
    addition: dict[str, Any] | None,
) -> dict[str, Any]:
    answers = corrections.outcomes(plan, addition)
    corrections.record_handled(layout.feedback_exported, exported, export_id, answers)
    return corrections.export_summary(export_id, plan, answers, addition)


@task(name="publish-feedback-report", cache_policy=NO_CACHE)
def publish_feedback_report(directory: Path, summary: dict[str, Any]) -> Path:
    """summary.json and report.md in the export's folder, and the report in the UI."""
    write_json(directory / "summary.json", summary)
    markdown = corrections.render_report(summary)
    with atomic_path(directory / "report.md") as tmp:
        tmp.write_text(markdown)
    create_markdown_artifact(markdown=markdown, key="cifar10-feedback-export", description=summary["headline"])
    rows = [{"verdict": verdict, "answers": count} for verdict, count in summary["counts"].items()]
    publish_table(table=rows, key="cifar10-feedback-verdicts", description=summary["headline"])
    return directory / "summary.json"
